"""The training entry: compose data, module, callbacks, loggers and trainer from a Hydra config."""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf

from cdkd.errors import ConfigError
from cdkd.files import write_json_atomic, write_text_atomic
from cdkd.inference.evaluate import evaluate
from cdkd.partition import PartitionScheme
from cdkd.training.checkpoints import load_network, teacher_paths
from cdkd.training.distill import DistillationModule
from cdkd.training.module import ChangeDetectionModule

EMPTY_POLICIES = ("one", "zero", "skip")


def partition_scheme(cfg: DictConfig) -> PartitionScheme:
    """The configured CAR partition, validated (thresholds in order, bucket names)."""
    part = cfg.partition
    try:
        return PartitionScheme.create(part.name, list(part.thresholds), list(part.buckets))
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def check_config(cfg: DictConfig) -> None:
    """Reject inconsistent settings before any data is read."""
    if cfg.empty_policy not in EMPTY_POLICIES:
        raise ConfigError(f"empty_policy '{cfg.empty_policy}' must be one of {EMPTY_POLICIES}")
    scheme = partition_scheme(cfg)
    if cfg.stage.bucket is not None:
        try:
            scheme.index(cfg.stage.bucket)
        except ValueError as exc:
            raise ConfigError(f"stage '{cfg.stage.name}': {exc}") from exc
    if cfg.stage.kind not in ("train", "distill"):
        raise ConfigError(f"stage '{cfg.stage.name}': kind '{cfg.stage.kind}' is not train/distill")
    if cfg.stage.kind == "distill" and float(cfg.distill["lambda"]) < 0:
        raise ConfigError(f"distill.lambda = {cfg.distill['lambda']} must be >= 0")
    for key in ("max_steps", "distill_max_steps", "warmup_steps", "val_every"):
        if int(cfg.schedule[key]) < (1 if key != "warmup_steps" else 0):
            raise ConfigError(f"schedule.{key} = {cfg.schedule[key]} is out of range")


def uses_gpu(cfg: DictConfig) -> bool:
    """Whether the configured trainer will run on a CUDA device."""
    return torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda")


def resolve_precision(cfg: DictConfig) -> str:
    """``auto`` precision: bf16 mixed precision on CUDA, full precision elsewhere."""
    precision = str(cfg.trainer.precision)
    if precision != "auto":
        return precision
    return "bf16-mixed" if uses_gpu(cfg) else "32-true"


def _plain(value: Any) -> Any:
    """A config value as plain Python (mappings and lists converted, scalars unchanged)."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


@dataclass(frozen=True)
class Schedule:
    """Optimizer steps of a run: total, warm-up, and between validations."""

    max_steps: int
    warmup_steps: int
    val_every: int


def resolve_schedule(cfg: DictConfig, datamodule: Any) -> Schedule:
    """The run's schedule in steps.

    From ``cfg.schedule`` (the student takes ``distill_max_steps``), unless the model counts
    its recipe in epochs (``model.epochs``, e.g. TTP) and the schedule accepts that
    (``schedule.model_epochs``, true for the paper's schedule): then epochs are converted
    with the number of training batches per process.
    """
    distill = cfg.stage.kind == "distill"
    epochs = cfg.model.get("epochs")
    if epochs is None or not cfg.schedule.get("model_epochs", False):
        steps = int(cfg.schedule["distill_max_steps" if distill else "max_steps"])
        return Schedule(steps, int(cfg.schedule.warmup_steps), int(cfg.schedule.val_every))
    datamodule.setup("fit")
    devices = cfg.trainer.devices
    count = len(devices) if OmegaConf.is_list(devices) else devices
    world = (count if isinstance(count, int) else 1) * int(cfg.trainer.num_nodes)
    per_epoch = max(1, math.ceil(len(datamodule.train_dataloader()) / world))
    steps = int(epochs["distill" if distill else "max"]) * per_epoch
    return Schedule(steps, int(epochs.warmup) * per_epoch, int(epochs.val_every) * per_epoch)


def build_module(cfg: DictConfig, schedule: Schedule) -> ChangeDetectionModule:
    """The LightningModule of the configured stage, with provenance recorded in its hparams."""
    model = cfg.model
    meta = {
        "stage": cfg.stage.name,
        "bucket": cfg.stage.bucket,
        "data": cfg.data.name,
        "normalize": _plain(model.normalize),
        "partition": _plain(cfg.partition),
    }
    common: dict[str, Any] = {
        "model": model.name,
        "model_kwargs": _plain(model.kwargs),
        "weights": model.weights,
        "pretrained": bool(model.pretrained),
        "loss": _plain(model.loss),
        "aux_weights": list(model.get("aux_weights") or []),
        "aux_loss": _plain(model.get("aux_loss")),
        "optimizer": _plain(model.optimizer),
        "scheduler": model.scheduler,
        "max_steps": schedule.max_steps,
        "warmup_steps": schedule.warmup_steps,
        "empty_policy": cfg.empty_policy,
        "meta": meta,
    }
    if cfg.stage.kind != "distill":
        return ChangeDetectionModule(**common)
    distill = cfg.distill
    teachers = teacher_paths(
        distill.teacher_dir,
        cfg.partition.teacher_stages,
        cfg.partition.run_suffix,
        distill.teachers,
    )
    try:
        return DistillationModule(
            init=str(distill.init),
            teachers={bucket: str(path) for bucket, path in teachers.items()},
            distill_lambda=float(distill["lambda"]),
            partition=meta["partition"],
            teacher_model=distill.teacher_model,
            **common,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train one stage as configured; returns the best validation metrics (and test, if run)."""
    check_config(cfg)
    # Lightning prints through its own handler; stop a second copy via Hydra's root handler.
    logging.getLogger("lightning.pytorch").propagate = False
    # The run folder always holds config.yaml before the first checkpoint: expected, not news.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    L.seed_everything(cfg.seed, workers=True)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))

    datamodule = instantiate(cfg.data)
    schedule = resolve_schedule(cfg, datamodule)
    module = build_module(cfg, schedule)
    loggers = [instantiate(lg) for lg in cfg.logger.values() if lg is not None]
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    if not loggers:  # a learning-rate monitor has nowhere to write without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    extra: dict[str, Any] = {}
    if cfg.trainer.get("gradient_clip_val") is None and cfg.model.get("grad_clip") is not None:
        extra["gradient_clip_val"] = float(cfg.model.grad_clip)  # the model's own recipe
    if not uses_gpu(cfg) and cfg.trainer.get("sync_batchnorm"):
        extra["sync_batchnorm"] = False  # SyncBatchNorm exists only for CUDA devices
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        **extra,
        max_steps=schedule.max_steps,
        val_check_interval=min(schedule.val_every, schedule.max_steps),
        precision=resolve_precision(cfg),
        callbacks=callbacks,
        logger=loggers or False,
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)

    ckpt_cb = trainer.checkpoint_callback
    best_path = getattr(ckpt_cb, "best_model_path", "") or ""
    best_score = getattr(ckpt_cb, "best_model_score", None)
    results: dict[str, Any] = {
        "val/mIoU": float(best_score) if best_score is not None else float("nan"),
        "best_checkpoint": best_path,
    }
    if cfg.test_after_fit and best_path and trainer.is_global_zero:
        summary = evaluate_best(cfg, datamodule, best_path, run_dir)
        results["test/mIoU"] = summary["test"]["per_image"]["mIoU"]
    return results


def evaluate_best(
    cfg: DictConfig, datamodule: Any, best_path: str, run_dir: Path
) -> dict[str, Any]:
    """Score the best checkpoint on val (what selected it) and test; write ``metrics.json``.

    Each split's full results (metrics, per-image CSV) go to ``run_dir/eval/<split>/``; the
    run's ``metrics.json`` summarises both splits and records the checksums of the CAR
    indexes of the data it saw.
    """
    net = load_network(best_path, expected_model=cfg.model.name)
    device = "cuda" if uses_gpu(cfg) else "cpu"
    summary: dict[str, Any] = {"checkpoint": str(best_path), "stage": cfg.stage.name}
    for split in ("val", "test"):
        datamodule.setup("test" if split == "test" else "validate")
        result = evaluate(
            net,
            datamodule.dataloader(split),
            run_dir / "eval" / split,
            device=device,
            empty_policy=cfg.empty_policy,
            extra={"split": split, "checkpoint": str(best_path)},
        )
        summary[split] = {k: result[k] for k in ("count", "per_image", "pooled")}
    summary["car_index_sha256"] = {
        split: datamodule.index_checksum(split) for split in ("train", "val", "test")
    }
    write_json_atomic(run_dir / "metrics.json", summary)
    return summary
