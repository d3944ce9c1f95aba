"""Resuming a run, moving a superseded run's outputs aside, and skipping a finished run."""

from __future__ import annotations

import json
import logging
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig

from cdkd.errors import ConfigError
from cdkd.runs.layout import RunFolder
from cdkd.runs.meta import read_meta
from cdkd.training.schedule import Schedule

log = logging.getLogger(__name__)


def resume_checkpoint(cfg: DictConfig, run_dir: Path) -> str | None:
    """The checkpoint to continue from, by ``ckpt_path`` and ``resume``.

    An explicit ``ckpt_path`` wins. ``resume=auto`` (default) continues from the run
    folder's last checkpoint when it exists; ``resume=true`` requires it; ``resume=false``
    starts afresh. A fresh start moves the outputs of an earlier run aside (see
    :meth:`RunFolder.superseded`) so old and new checkpoints and metrics never mix.
    """
    folder = RunFolder(run_dir)
    path: str | None
    if cfg.ckpt_path is not None:
        path = str(cfg.ckpt_path)
    else:
        last = folder.last
        if cfg.resume is True and not last.is_file():
            raise ConfigError(f"{last}: resume=true but there is no checkpoint to resume from")
        path = str(last) if cfg.resume is not False and last.is_file() else None
    if path is not None:
        read_meta(path, expected_model=cfg.model.name)  # one-line error if corrupt or foreign
        log.info("resuming from %s", path)
        return path
    stale = [item for item in folder.outputs if item.exists()]
    if stale and getattr(rank_zero_only, "rank", 0) == 0:  # other DDP ranks decide alike
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        target = folder.superseded(stamp)
        target.mkdir(parents=True)
        for item in stale:
            shutil.move(item, target / item.name)
        log.warning("fresh start: moved the earlier run's outputs to %s", target)
    return None


def finished_run(
    run_dir: Path, ckpt_path: str | None, schedule: Schedule, needs_test: bool = False
) -> dict[str, Any] | None:
    """The recorded results when this run already reached its last step and was evaluated.

    So a re-launched stage, pipeline or multirun sweep skips members that are done instead
    of evaluating them again; ``None`` means there is work left (``needs_test``: also when
    the recorded results lack the test split, e.g. a student of the pipeline's grid).
    """
    folder = RunFolder(run_dir)
    metrics_file = folder.metrics
    if ckpt_path != str(folder.last) or not metrics_file.is_file():
        return None
    step = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)["global_step"]
    if step < schedule.max_steps:
        return None
    try:
        recorded = json.loads(metrics_file.read_text())
        results = {"val/mIoU": recorded["val"]["per_image"]["mIoU"], "skipped": True}
        results["best_checkpoint"] = recorded["checkpoint"]
        if "test" in recorded:
            results["test/mIoU"] = recorded["test"]["per_image"]["mIoU"]
        elif needs_test:
            return None
    except (ValueError, KeyError, TypeError):
        log.warning("%s is not a run summary of this version: evaluating again", metrics_file)
        return None
    return results
