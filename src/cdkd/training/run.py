"""The training entry: one stage of the method, as the list of its steps."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from cdkd.data.config import datamodule_from_config
from cdkd.data.datamodule import process_batch_size
from cdkd.errors import CdkdError
from cdkd.files import write_text_atomic
from cdkd.runs.layout import RunFolder
from cdkd.runs.lock import RunLock, leads_launch
from cdkd.training.build import build_module, checkpoint_meta, distill_teachers, pretrained_files
from cdkd.training.checks import check_config, check_splits
from cdkd.training.evaluation import evaluate_best
from cdkd.training.provenance import write_provenance
from cdkd.training.resume import finished_run, resume_checkpoint
from cdkd.training.schedule import resolve_schedule
from cdkd.training.trainer import build_trainer, resolve_world_size

log = logging.getLogger(__name__)


def quiet_expected_warnings() -> None:
    """Silence messages that every run would print and no user can act on."""
    # Lightning prints through its own handler; stop a second copy via Hydra's root handler.
    logging.getLogger("lightning.pytorch").propagate = False
    # The run folder always holds config.yaml before the first checkpoint: expected, not news.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    # The module's batch hooks are meant to run (the datamodule defines none).
    warnings.filterwarnings("ignore", message=r"You have overridden `on_.*_batch_transfer`")
    # Lightning's own use of a torch API that torch deprecated; nothing a user can change.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train one stage as configured; returns the best validation metrics (and test, if run).

    Rank 0 holds the run folder's lock from before the first write to the end: a second
    launch on the folder stops with one line naming this run.
    """
    check_config(cfg)
    files = pretrained_files(cfg)  # a missing weight file stops the run before anything is written
    with RunLock(cfg.run_dir, enabled=leads_launch()):
        return _train(cfg, files)


def _train(cfg: DictConfig, files: dict[str, Path]) -> dict[str, Any]:
    """The steps of :func:`train` once the run folder is this process's."""
    quiet_expected_warnings()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    log.info("seed %d", cfg.seed)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    world = resolve_world_size(cfg)
    process_batch_size(int(cfg.data.batch_size), world)  # refuses an uneven split up front
    ckpt_path = resume_checkpoint(cfg, run_dir)  # reads the earlier run's config.yaml: first
    write_text_atomic(RunFolder(run_dir).config, OmegaConf.to_yaml(cfg, resolve=True))

    datamodule = datamodule_from_config(cfg)
    check_splits(cfg, datamodule)
    schedule = resolve_schedule(cfg, datamodule, world)
    finished = finished_run(run_dir, ckpt_path, schedule, bool(cfg.test_after_fit))
    if finished is not None:
        log.info("%s: already finished (delete metrics.json or resume=false to redo)", run_dir)
        return finished

    teachers = distill_teachers(cfg) if cfg.stage.kind == "distill" else None
    meta = checkpoint_meta(cfg, teachers)  # hashes the student's sources
    module = build_module(cfg, schedule, meta, files)
    if rank_zero_only.rank == 0:  # type: ignore[attr-defined]  # Lightning sets it on import
        write_provenance(run_dir, datamodule, meta, ckpt_path)
    trainer = build_trainer(cfg, schedule, world)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException as exc:
        raise CdkdError(
            f"{run_dir}: stopped by SIGTERM at step {trainer.global_step}; "
            f"{RunFolder(run_dir).last.name} holds that state, run the same command again to resume"
        ) from exc

    ckpt_cb = trainer.checkpoint_callback
    best_path = getattr(ckpt_cb, "best_model_path", "") or ""
    best_score = getattr(ckpt_cb, "best_model_score", None)
    results: dict[str, Any] = {
        "val/mIoU": float(best_score) if best_score is not None else float("nan"),
        "best_checkpoint": best_path,
    }
    if best_path and trainer.is_global_zero:
        splits = ("val", "test") if cfg.test_after_fit else ("val",)
        summary = evaluate_best(cfg, datamodule, best_path, run_dir, splits)
        if "test" in summary:
            results["test/mIoU"] = summary["test"]["per_image"]["mIoU"]
    return results
