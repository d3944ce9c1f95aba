"""A run's schedule in optimizer steps, and the paper's learning-rate curve over it.

The schedule comes from ``cfg.schedule`` (or the model's own epochs); Lightning's
``trainer.max_steps``, ``trainer.max_epochs`` and ``trainer.val_check_interval`` override it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

from omegaconf import DictConfig

from cdkd.errors import ConfigError

#: How the learning rate falls to 0 after the warm-up (``model.scheduler``).
Decay = Literal["linear", "cosine"]
DECAYS: tuple[Decay, ...] = get_args(Decay)


def warmup_decay(
    base_lr: float,
    max_steps: int,
    warmup_steps: int = 1000,
    warmup_start_lr: float = 1e-6,
    decay: Decay = "linear",
) -> Callable[[int], float]:
    """Multiplier of ``base_lr`` at each optimizer step, for ``torch.optim.lr_scheduler.LambdaLR``.

    The learning rate rises linearly from ``warmup_start_lr`` to ``base_lr`` over
    ``warmup_steps``, then decays to 0 at ``max_steps``, linearly or along a half cosine.
    """
    if decay not in DECAYS:
        raise ValueError(f"unknown scheduler '{decay}': use linear or cosine")
    start = min(warmup_start_lr / base_lr, 1.0) if base_lr > 0 else 1.0
    warmup_steps = max(0, min(warmup_steps, max_steps))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return start + (1.0 - start) * step / warmup_steps
        span = max(1, max_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        if decay == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return factor


@dataclass(frozen=True)
class Schedule:
    """Optimizer steps of a run: total, warm-up, and between validations."""

    max_steps: int
    warmup_steps: int
    val_every: int


@dataclass(frozen=True)
class TrainerOverrides:
    """The run-length keys a user gave the Lightning trainer (``None``: the schedule's)."""

    max_steps: int | None = None
    max_epochs: int | None = None
    val_check_interval: int | float | None = None


class _TrainBatches(Protocol):
    """What the schedule needs of a datamodule: its split, and the batches of one epoch."""

    def setup(self, stage: str) -> None: ...

    def train_batches(self, world_size: int = 1) -> int: ...


def trainer_overrides(cfg: DictConfig) -> TrainerOverrides:
    """``trainer.max_steps``, ``trainer.max_epochs`` and ``trainer.val_check_interval``, checked.

    Steps and epochs are positive integers; the validation interval is a positive integer
    (optimizer steps) or a float in (0, 1] (a fraction of an epoch), as Lightning reads it.
    """
    trainer = cfg.trainer
    counts: dict[str, int | None] = {}
    for key in ("max_steps", "max_epochs"):
        value = trainer.get(key)
        if value is not None and (not _is_int(value) or value < 1):
            raise ConfigError(
                f"trainer.{key} = {value!r} must be a positive integer (null: the schedule's)"
            )
        counts[key] = None if value is None else int(value)
    interval = trainer.get("val_check_interval")
    if interval is not None and not (
        (_is_int(interval) and interval >= 1)
        or (isinstance(interval, float) and 0.0 < interval <= 1.0)
    ):
        raise ConfigError(
            f"trainer.val_check_interval = {interval!r} must be a positive integer (steps) or a "
            "fraction of an epoch in (0, 1] (null: the schedule's)"
        )
    return TrainerOverrides(counts["max_steps"], counts["max_epochs"], interval)


def _is_int(value: Any) -> bool:
    """An integer, not a bool (YAML's ``true`` is no step count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def resolve_schedule(cfg: DictConfig, datamodule: _TrainBatches, world_size: int = 1) -> Schedule:
    """The run's schedule in optimizer steps.

    From ``cfg.schedule`` (the student takes ``distill_max_steps``), whatever the number of
    processes: ``data.batch_size`` is the global batch. When the model counts its recipe in
    epochs (``model.epochs``, e.g. TTP) and the schedule accepts that (``schedule.model_epochs``,
    true for the paper's schedule), epochs are converted with the training batches each of the
    ``world_size`` processes draws in an epoch.

    Lightning's keys then override it (:func:`trainer_overrides`): ``max_steps`` sets the steps,
    ``max_epochs`` sets them to that many epochs of training batches (with ``max_steps`` as
    well, the earlier end wins, as in Lightning), and the learning rate decays to 0 at the
    resulting end (the warm-up keeps its steps; :func:`warmup_decay` cuts it at the end).
    ``val_check_interval`` sets the steps between validations (a float: that fraction of an
    epoch).
    """
    overrides = trainer_overrides(cfg)
    distill = cfg.stage.kind == "distill"
    epochs = cfg.model.get("epochs")
    if not cfg.schedule.get("model_epochs", False):
        epochs = None
    interval = overrides.val_check_interval
    per_epoch = 0
    if epochs is not None or overrides.max_epochs is not None or isinstance(interval, float):
        datamodule.setup("fit")
        per_epoch = max(1, datamodule.train_batches(world_size))
    if epochs is None:
        max_steps = int(cfg.schedule["distill_max_steps" if distill else "max_steps"])
        warmup, val_every = int(cfg.schedule.warmup_steps), int(cfg.schedule.val_every)
    else:
        max_steps = int(epochs["distill" if distill else "max"]) * per_epoch
        warmup, val_every = int(epochs.warmup) * per_epoch, int(epochs.val_every) * per_epoch
    ends = [overrides.max_steps] if overrides.max_steps is not None else []
    if overrides.max_epochs is not None:
        ends.append(overrides.max_epochs * per_epoch)
    if ends:
        max_steps = min(ends)
    if isinstance(interval, float):
        val_every = max(1, round(interval * per_epoch))
    elif interval is not None:
        val_every = interval
    return Schedule(max_steps, warmup, val_every)
