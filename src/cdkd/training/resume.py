"""Resuming a run, moving a superseded run's outputs aside, and skipping a finished run.

A run folder is resumed (or reported finished) only by a run of the same recipe: the keys of
:data:`RECIPE_KEYS` in the folder's ``config.yaml``, written by the earlier run, must equal the
current ones (:func:`check_recipe`).
"""

from __future__ import annotations

import json
import logging
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from yaml import YAMLError  # type: ignore[import-untyped]  # PyYAML ships no types

from cdkd.errors import ConfigError
from cdkd.runs.layout import RunFolder
from cdkd.runs.meta import read_meta
from cdkd.training.schedule import Schedule

log = logging.getLogger(__name__)

#: What decides what a run trains and the results it records: a key here, or any key under
#: one, must be the same for a run to continue (or count as) the run recorded in its folder.
RECIPE_KEYS: tuple[str, ...] = (
    "seed",
    "model",
    "data",
    "partition",
    "stage",
    "schedule",
    "distill",
    "empty_policy",
    "trainer.max_steps",
    "trainer.max_epochs",
    "trainer.val_check_interval",
    "trainer.check_val_every_n_epoch",
    "trainer.precision",
    "trainer.accumulate_grad_batches",
    "trainer.gradient_clip_val",
    "trainer.gradient_clip_algorithm",
    "callbacks.model_checkpoint.monitor",
    "callbacks.model_checkpoint.mode",
)
#: Keys under :data:`RECIPE_KEYS` that say where files live or how fast the run goes, not
#: what it trains: a moved data or runs folder, or more loader workers, still resume.
RUNTIME_KEYS: tuple[str, ...] = (
    "data.root",
    "data.cache_dir",
    "data.num_workers",
    "data.pin_memory",
    "data.persistent_workers",
    "data.eval_batch_size",
    "model.weights",
    "model.backbone_weights",
    "distill.lambdas",
    "distill.teacher_dir",
    "distill.teachers",
    "distill.init",
)
#: Recipe keys a stage of each kind does not train with (its schedule takes the other length).
UNUSED_BY_KIND: dict[str, tuple[str, ...]] = {
    "train": ("distill", "schedule.distill_max_steps"),
    "distill": ("schedule.max_steps",),
}
#: How many differing keys the error names.
_SHOWN = 3


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    """Whether ``key`` is one of ``prefixes`` or lies under one."""
    return any(key == p or key.startswith(f"{p}.") for p in prefixes)


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value of every non-mapping value (an empty mapping has none)."""
    if not isinstance(node, dict):
        return {prefix: node}
    leaves: dict[str, Any] = {}
    for key, value in node.items():
        leaves.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
    return leaves


def _kind(config: dict[str, Any]) -> str:
    """The stage kind a config trains (``train`` or ``distill``)."""
    stage = config.get("stage")
    return str(stage.get("kind")) if isinstance(stage, dict) else ""


def recipe(config: dict[str, Any], kind: str | None = None) -> dict[str, Any]:
    """The recipe keys of a resolved config (plain containers) and their values.

    ``kind``: the stage kind whose unused keys to leave out (default: the config's own).
    """
    unused = UNUSED_BY_KIND.get(_kind(config) if kind is None else kind, ())
    return {
        key: value
        for key, value in _leaves(config).items()
        if _under(key, RECIPE_KEYS) and not _under(key, RUNTIME_KEYS + unused)
    }


def recipe_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key: RECORDED -> CURRENT`` for each recipe key that differs, the current order first.

    Both sides are read as the current stage kind trains. A key one side lacks counts as
    null, so a key a later version added with a null default does not block resuming, while
    one set with ``+key=value`` does.
    """
    kind = _kind(current)
    old, new = recipe(recorded, kind), recipe(current, kind)
    keys = [*new, *(key for key in old if key not in new)]
    return [
        f"{key}: {_shown(old.get(key))} -> {_shown(new.get(key))}"
        for key in keys
        if old.get(key) != new.get(key)
    ]


def _shown(value: Any) -> str:
    """A value on one line (``null`` for a key that is not set)."""
    return json.dumps(value, default=str)


def check_recipe(cfg: DictConfig, run_dir: Path) -> None:
    """Refuse to continue the run recorded in ``run_dir`` with another recipe (one line).

    The earlier run's ``config.yaml`` is read before this run writes its own; a folder without
    one (runs of older versions) or with an unreadable one is continued with a warning.
    """
    recorded_file = RunFolder(run_dir).config
    if not recorded_file.is_file():
        log.warning("%s: no %s: resuming without checking its recipe", run_dir, recorded_file.name)
        return
    try:
        recorded = OmegaConf.to_container(OmegaConf.load(recorded_file), resolve=False)
    except (OSError, YAMLError, OmegaConfBaseException) as exc:
        log.warning(
            "%s: not readable (%s): resuming without checking its recipe", recorded_file, exc
        )
        return
    if not isinstance(recorded, dict):
        log.warning("%s: not a run config: resuming without checking its recipe", recorded_file)
        return
    current = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))
    differences = recipe_differences(cast(dict[str, Any], recorded), current)
    if differences:
        more = len(differences) - _SHOWN
        shown = "; ".join(differences[:_SHOWN]) + (f" (and {more} more)" if more > 0 else "")
        raise ConfigError(
            f"{run_dir}: holds a run of another recipe (recorded -> now: {shown}); "
            "resume=false moves that run aside and starts afresh, run_dir=DIR trains in a "
            "separate folder"
        )


def resume_checkpoint(cfg: DictConfig, run_dir: Path) -> str | None:
    """The checkpoint to continue from, by ``ckpt_path`` and ``resume``.

    An explicit ``ckpt_path`` wins. ``resume=auto`` (default) continues from the run
    folder's last checkpoint when it exists; ``resume=true`` requires it; ``resume=false``
    starts afresh. Continuing the folder's own run requires its recipe (:func:`check_recipe`).
    A fresh start moves the outputs of an earlier run aside, with its config (see
    :meth:`RunFolder.superseded`), so old and new checkpoints and metrics never mix.
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
        if path == str(folder.last):
            check_recipe(cfg, run_dir)
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
        if folder.config.is_file():  # this run writes its own next
            shutil.move(folder.config, target / folder.config.name)
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
