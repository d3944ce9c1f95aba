"""``python -m cdkd.analyze``: the paper's analysis figures and tables from finished evaluations.

Items (``what=``): ``car``, ``ranges``, ``classes``, ``visual``, ``models`` or ``all``; see
:mod:`cdkd.analysis.analyze`. Only files that evaluation and the pipeline wrote are read;
nothing is trained or predicted.
"""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from cdkd.analysis.analyze import Analysis, run_analysis
from cdkd.cli.common import command
from cdkd.runs.lock import RunLock

#: Keys of ``analyze.yaml`` that mean nothing to ``cdkd.eval`` (left out of suggested commands).
_OWN_KEYS = frozenset(
    {
        "what",
        "strategies",
        "out_dir",
        "results_dir",
        "car_splits",
        "groups",
        "metric",
        "images",
        "top",
        "cell",
        "debug",
    }
)


def eval_arguments() -> tuple[str, ...]:
    """The command-line overrides of this call that ``cdkd.eval`` understands too."""
    overrides = OmegaConf.to_container(HydraConfig.get().overrides.task)
    kept = []
    for item in overrides or []:
        key = str(item).lstrip("+~").split("=", 1)[0].split(".", 1)[0]
        if key not in _OWN_KEYS:
            kept.append(str(item))
    return tuple(kept)


@command("analyze")
def main(cfg: DictConfig) -> None:
    """Write the requested figures and tables and list them.

    The model's analysis folder (``out_dir``) is locked while it is written; the tables
    across models (``results_dir``) are rewritten whole from every model's results.
    """
    with RunLock(cfg.out_dir):
        written, skipped = run_analysis(Analysis(cfg, eval_arguments()))
    for note in skipped:
        print(f"note: {note}")
    for path in written:
        print(f"written: {path}")
