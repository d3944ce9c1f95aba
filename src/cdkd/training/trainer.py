"""The Lightning side of a run: devices, precision, the schedule in steps, and the Trainer."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.accelerators import Accelerator, AcceleratorRegistry
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf

from cdkd.config import plain
from cdkd.errors import ConfigError, brief
from cdkd.training.callbacks import (
    AtomicCheckpointIO,
    FinalValidation,
    PreemptionCheckpoint,
    RngStateCallback,
)
from cdkd.training.checks import number
from cdkd.training.schedule import Schedule


def uses_gpu(cfg: DictConfig) -> bool:
    """Whether the configured trainer will run on a CUDA device."""
    return torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda")


def resolve_precision(cfg: DictConfig) -> str:
    """``auto`` precision: bf16 mixed precision on CUDA, full precision elsewhere."""
    precision = str(cfg.trainer.precision)
    if precision != "auto":
        return precision
    return "bf16-mixed" if uses_gpu(cfg) else "32-true"


def resolve_world_size(cfg: DictConfig) -> int:
    """Processes the configured trainer runs: its devices, as Lightning resolves them, x nodes.

    ``trainer.devices`` may be a count, ``-1`` or ``"auto"`` (every device of the accelerator),
    a list of indices or a string of them (``"0,1"``); ``accelerator: auto`` and ``gpu`` pick
    what Lightning picks. Lightning's own device parsing does the counting.
    """
    flag = cfg.trainer.get("accelerator", "auto")
    flag = instantiate(flag) if OmegaConf.is_dict(flag) else flag
    devices = plain(cfg.trainer.get("devices", "auto"))
    accelerator = type(flag) if isinstance(flag, Accelerator) else _accelerator_class(str(flag))
    try:
        if devices == "auto":
            count = accelerator.auto_device_count()
        else:
            count = len(accelerator.get_parallel_devices(accelerator.parse_devices(devices)))
    except (MisconfigurationException, TypeError, ValueError) as exc:
        raise ConfigError(f"trainer.devices = {devices!r}: {brief(exc)}") from exc
    nodes: int = number(cfg, "trainer.num_nodes", int)
    if count < 1 or nodes < 1:
        raise ConfigError(f"trainer.devices = {devices!r}, trainer.num_nodes = {nodes}: no process")
    return count * nodes


def _accelerator_class(flag: str) -> type[Accelerator]:
    """Lightning's accelerator for ``trainer.accelerator``, choosing for ``auto`` and ``gpu``."""
    choices = {"auto": ("tpu", "mps", "cuda", "cpu"), "gpu": ("mps", "cuda")}.get(flag, (flag,))
    if flag not in ("auto", "gpu") and flag not in AcceleratorRegistry:
        raise ConfigError(
            f"trainer.accelerator = {flag!r}: use auto, gpu or one of {list(AcceleratorRegistry)}"
        )
    for name in choices:
        accelerator: type[Accelerator] = AcceleratorRegistry[name]["accelerator"]
        if accelerator.is_available():
            return accelerator
    raise ConfigError(f"trainer.accelerator = {flag!r}: no such device is available here")


def build_trainer(cfg: DictConfig, schedule: Schedule, world: int) -> L.Trainer:
    """The Trainer of ``cfg.trainer`` with the run's schedule, callbacks, loggers and precision.

    ``world`` is the process count of :func:`resolve_world_size`; a Trainer that runs another
    number (e.g. under a launcher's environment) is a :class:`ConfigError`.
    """
    loggers = [instantiate(lg) for lg in cfg.logger.values() if lg is not None]
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    callbacks += [RngStateCallback(), PreemptionCheckpoint(), FinalValidation()]
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
        plugins=[AtomicCheckpointIO()],
    )
    if trainer.world_size != world:
        raise ConfigError(
            f"trainer: Lightning runs {trainer.world_size} processes but trainer.devices x "
            f"trainer.num_nodes give {world}; make them agree"
        )
    return trainer
