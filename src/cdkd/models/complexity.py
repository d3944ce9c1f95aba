"""Model size and computation, measured the way the paper's Table II reports them."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from cdkd.models.registry import create_model


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (frozen ones included unless ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_gmacs(model: str | torch.nn.Module, size: int = 512, **overrides: Any) -> float:
    """Multiply-accumulates (in G) of one forward pass of ``model`` on a pair of ``size`` images.

    One multiply-add counts once and the batch is 1, the convention of the paper's Table II
    (its "FLOPs"). The forward pass runs on the meta device, so nothing is computed and even
    the largest models are measured in seconds. Convolutions and matrix products are
    counted; element-wise operations are not. ``model`` is a registered name (built with
    ``overrides``) or a network, which is moved to the meta device: its weights are dropped.
    """
    if isinstance(model, str):
        model = create_model(model, **overrides)
    model = model.eval().to("meta")
    x = torch.empty(1, 3, size, size, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x, x)
    return counter.get_total_flops() / 2 / 1e9
