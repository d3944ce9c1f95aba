"""Learning-rate schedule of the paper: linear warm-up, then linear (or cosine) decay to 0."""

from __future__ import annotations

import math
from collections.abc import Callable


def warmup_decay(
    base_lr: float,
    max_steps: int,
    warmup_steps: int = 1000,
    warmup_start_lr: float = 1e-6,
    decay: str = "linear",
) -> Callable[[int], float]:
    """Multiplier of ``base_lr`` at each optimizer step, for ``torch.optim.lr_scheduler.LambdaLR``.

    The learning rate rises linearly from ``warmup_start_lr`` to ``base_lr`` over
    ``warmup_steps``, then decays to 0 at ``max_steps``, linearly or along a half cosine.
    """
    if decay not in ("linear", "cosine"):
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
