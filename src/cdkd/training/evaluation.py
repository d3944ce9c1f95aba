"""After fit: the best checkpoint scored on validation (and test), summarised in metrics.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from cdkd.files import write_json_atomic
from cdkd.inference.evaluate import evaluate
from cdkd.models.checkpoint import load_network
from cdkd.runs.layout import RunFolder
from cdkd.training.provenance import index_checksums
from cdkd.training.trainer import uses_gpu


def evaluate_best(
    cfg: DictConfig,
    datamodule: Any,
    best_path: str,
    run_dir: Path,
    splits: tuple[str, ...] = ("val", "test"),
) -> dict[str, Any]:
    """Score the best checkpoint on val (what selected it) and test; write ``metrics.json``.

    Each split's full results (metrics, per-image CSV) go to the run folder's evaluation
    folder of the split (:meth:`RunFolder.eval_dir`); the run's ``metrics.json`` summarises
    the splits and records the checksums of the CAR indexes of the data it saw.
    ``test_after_fit=false`` leaves test out (``splits=("val",)``), so a run chosen among
    others on validation is never scored on test before the choice.
    """
    net = load_network(best_path, expected_model=cfg.model.name)
    device = "cuda" if uses_gpu(cfg) else "cpu"
    summary: dict[str, Any] = {"checkpoint": str(best_path), "stage": cfg.stage.name}
    for split in splits:
        datamodule.setup("test" if split == "test" else "validate")
        result = evaluate(
            net,
            datamodule.dataloader(split),
            RunFolder(run_dir).eval_dir(split),
            device=device,
            empty_policy=cfg.empty_policy,
            extra={"split": split, "checkpoint": str(best_path)},
        )
        summary[split] = {k: result[k] for k in ("count", "per_image", "pooled")}
    summary["car_index_sha256"] = index_checksums(datamodule)
    write_json_atomic(RunFolder(run_dir).metrics, summary)
    return summary
