"""``python -m cdkd.eval``: evaluate a checkpoint on a data split.

Prints a table, writes ``metrics.json`` (the schema of ``cdkd.score``), ``per_image.csv``
(name, CAR, per-image metrics) and optionally the 0/255 prediction PNGs into ``out_dir``.
"""

from __future__ import annotations

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from rich.console import Console

from cdkd.cli.common import config_dir, report_errors
from cdkd.errors import ConfigError


def pick_device(name: str) -> torch.device:
    """``auto`` means CUDA when available; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
@report_errors
def main(cfg: DictConfig) -> None:
    """Evaluate ``cfg.checkpoint`` on ``cfg.split`` and write the results."""
    from cdkd.analysis.tables import metrics_table
    from cdkd.inference.evaluate import evaluate
    from cdkd.training.checkpoints import load_network

    if cfg.split not in ("train", "val", "test"):
        raise ConfigError(f"split '{cfg.split}' must be train, val or test")
    net = load_network(cfg.checkpoint, expected_model=cfg.model.name)
    datamodule = instantiate(cfg.data, bucket=None)
    datamodule.prepare_data()
    datamodule.setup("test" if cfg.split == "test" else "validate")
    loader = datamodule.dataloader(cfg.split)
    result = evaluate(
        net,
        loader,
        cfg.out_dir,
        device=pick_device(cfg.device),
        empty_policy=cfg.empty_policy,
        save_predictions=bool(cfg.save_predictions),
        extra={"split": cfg.split, "checkpoint": str(cfg.checkpoint)},
        total=len(loader),
    )
    Console().print(metrics_table(result, f"{cfg.model.name} / {cfg.stage.name} on {cfg.split}"))
    Console().print(f"results written to {cfg.out_dir}")
