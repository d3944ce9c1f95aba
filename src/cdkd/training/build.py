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
from cdkd.runs.meta import CheckpointMeta, PartitionMeta, Source
from cdkd.training.distill import DistillationModule, check_car_rule
from cdkd.training.module import ChangeDetectionModule
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
        teacher_model=distill.teacher_model,
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
            **common,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
