"""Building a run's parts from its config: pretrained files, checkpoint record, module."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from cdkd.config import plain
from cdkd.errors import ConfigError
from cdkd.models.pretrained import random_parts, resolve_all
from cdkd.runs.layout import teacher_checkpoints
from cdkd.runs.meta import CheckpointMeta, PartitionMeta, Source
from cdkd.training.distill import SINGLE, DistillationModule
from cdkd.training.module import ChangeDetectionModule
from cdkd.training.routing import check_car_rule
from cdkd.training.schedule import Schedule

log = logging.getLogger(__name__)


def pretrained_files(cfg: DictConfig) -> dict[str, Path]:
    """The weight file of each pretrained part the run starts from, found before data is read.

    The student starts from M_O and ``model.weights`` replaces every weight, so neither loads
    pretrained parts. On a real dataset, a part that the reference recipe starts pretrained
    but that stays random is logged as a warning.
    """
    model = cfg.model
    if cfg.stage.kind == "distill" or model.weights is not None:
        return {}
    files = resolve_all(model.name, bool(model.pretrained), plain(model.get("backbone_weights")))
    if cfg.data.get("synthetic") is None:
        for part in random_parts(model.name, files):
            log.warning(
                "%s: %s (%s %s) starts from random weights, but the reference recipe loads them; "
                "set model.pretrained=true or model.backbone_weights",
                model.name,
                part.name,
                part.module,
                part.tag.replace(":", " "),
            )
    return files


#: ``distill.<key>`` -> the :class:`DistillationModule` argument it sets. The config leaves them
#: null by default (the argument's default, the paper's method), so that a student run folder
#: recorded before they existed still resumes (see :func:`cdkd.training.resume.check_recipe`).
DISTILL_OPTIONS: dict[str, str] = {
    "loss": "distill_loss",
    "routing": "routing",
    "temperature": "temperature",
    "soft_width": "soft_width",
    "ensemble_tau": "ensemble_tau",
    "dist_beta": "dist_beta",
    "dist_gamma": "dist_gamma",
    "feature_norm": "feature_norm",
}


def distill_options(cfg: DictConfig) -> dict[str, Any]:
    """The student's loss and routing arguments that the config sets (not null)."""
    values = {arg: cfg.distill.get(key) for key, arg in DISTILL_OPTIONS.items()}
    return {arg: value for arg, value in values.items() if value is not None}


def distill_teachers(cfg: DictConfig) -> dict[str, Path]:
    """The student's teachers: each bucket's (:func:`teacher_checkpoints`), or for
    ``distill.routing=single`` the one of ``distill.teachers.all`` (M_O itself when
    ``distill.single_teacher=init``)."""
    distill = cfg.distill
    if distill.get("routing") != "single":
        return teacher_checkpoints(cfg)
    if distill.get("single_teacher") == "init":
        return {SINGLE: Path(distill.init)}
    return {SINGLE: Path((distill.teachers or {})[SINGLE])}


def single_from_init(cfg: DictConfig) -> bool:
    """Whether the student distils from M_O itself (its teacher is of the student's model)."""
    distill = cfg.distill
    return bool(distill.get("routing") == "single" and distill.get("single_teacher") == "init")


def checkpoint_meta(cfg: DictConfig, teachers: Mapping[str, Path] | None = None) -> CheckpointMeta:
    """The record the run writes into its checkpoints; the student's sources are hashed here."""
    model = cfg.model
    common: dict[str, Any] = {
        "model": model.name,
        "stage": cfg.stage.name,
        "bucket": cfg.stage.bucket,
        "data": cfg.data.name,
        "partition": PartitionMeta.from_mapping(plain(cfg.partition)),
        "mean": tuple(float(v) for v in model.normalize.mean),
        "std": tuple(float(v) for v in model.normalize.std),
    }
    if cfg.stage.kind != "distill":
        return CheckpointMeta(**common)
    distill = cfg.distill
    return CheckpointMeta(
        **common,
        distill_lambda=float(distill["lambda"]),
        car_rule=distill.get("car_rule", "paper"),
        teacher_model=model.name if single_from_init(cfg) else distill.teacher_model,
        init=Source.hashed(distill.init),
        teachers={bucket: Source.hashed(path) for bucket, path in (teachers or {}).items()},
    )


def build_module(
    cfg: DictConfig,
    schedule: Schedule,
    meta: CheckpointMeta,
    files: Mapping[str, Path] | None = None,
) -> ChangeDetectionModule:
    """The LightningModule of the configured stage, recording ``meta`` in its checkpoints.

    ``files`` are the pretrained parts' weight files (:func:`pretrained_files`).
    """
    files = dict(files or {})
    model = cfg.model
    common: dict[str, Any] = {
        "model": model.name,
        "model_kwargs": plain(model.kwargs),
        "weights": model.weights,
        "pretrained": bool(files) and bool(model.pretrained),
        "backbone_weights": {part: str(path) for part, path in files.items()} or None,
        "loss": plain(model.loss),
        "aux_weights": list(model.get("aux_weights") or []),
        "aux_loss": plain(model.get("aux_loss")),
        "optimizer": plain(model.optimizer),
        "scheduler": model.scheduler,
        "max_steps": schedule.max_steps,
        "warmup_steps": schedule.warmup_steps,
        "empty_policy": cfg.empty_policy,
        "nan_policy": cfg.nan_policy,
        "channels_last": cfg.get("channels_last"),
        "compile": bool(cfg.get("compile", False)),
        "meta": meta.to_hparams(),
    }
    if not meta.distilled:
        return ChangeDetectionModule(**common)
    assert meta.init is not None and meta.partition is not None
    assert meta.distill_lambda is not None and meta.car_rule is not None
    try:
        return DistillationModule(
            init=meta.init.path,
            teachers={bucket: source.path for bucket, source in meta.teachers.items()},
            distill_lambda=float(meta.distill_lambda),
            partition=meta.partition.to_dict(),
            teacher_model=meta.teacher_model,
            car_rule=check_car_rule(meta.car_rule),
            **distill_options(cfg),
            **common,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
