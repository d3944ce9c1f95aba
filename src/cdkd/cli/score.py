"""Score a folder of predicted change masks against ground truth.

``python -m cdkd.score pred=DIR gt=DIR [out=FILE.json] [empty_policy=one|zero|skip]``

Prints per-image averaged and pooled metrics (percent) and optionally writes them as JSON
(fractions in [0, 1]).
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from cdkd.analysis.tables import metrics_table
from cdkd.cli.common import command
from cdkd.data.io import check_label_threshold
from cdkd.errors import ConfigError
from cdkd.files import write_json_atomic
from cdkd.metrics import check_empty_policy
from cdkd.metrics.score import score_folders


def _required(cfg: DictConfig, key: str, meaning: str) -> str:
    if OmegaConf.is_missing(cfg, key) or cfg[key] in (None, ""):
        raise ConfigError(f"{key} is required: {key}=DIR, the {meaning}")
    return str(cfg[key])


@command("score")
def main(cfg: DictConfig) -> None:
    """Score ``pred`` against ``gt``, print the table and write ``out`` if given."""
    pred_dir = _required(cfg, "pred", "folder of predicted masks")
    gt_dir = _required(cfg, "gt", "folder of ground-truth masks")
    threshold = check_label_threshold(OmegaConf.select(cfg, "data.label_threshold"))
    result = score_folders(pred_dir, gt_dir, check_empty_policy(str(cfg.empty_policy)), threshold)
    Console().print(metrics_table(result, title=f"{pred_dir} vs {gt_dir}"))
    if cfg.out:
        write_json_atomic(cfg.out, result)
        print(f"wrote {cfg.out}")
