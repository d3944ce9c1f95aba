"""Task losses on head logits, computed at the label's resolution with ignore pixels excluded."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cdkd.partition import IGNORE_INDEX

LOSSES = ("ce", "bce")


def resize_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize head logits to ``size`` (no-op when they already match)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class TaskLoss(nn.Module):
    """The supervised loss of a change model.

    ``ce``: 2-channel cross-entropy (the paper's equation (5) written for two logits).
    ``bce``: BCE-with-logits on a 1-channel head. Both resize the logits to the label size
    first and average over the valid (non-ignore) pixels of the batch.
    """

    def __init__(self, kind: str = "ce", ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        if kind not in LOSSES:
            raise ValueError(f"unknown loss '{kind}': use one of {LOSSES}")
        self.kind = kind
        self.ignore_index = ignore_index

    @property
    def out_channels(self) -> int:
        """Number of logit channels this loss expects."""
        return 2 if self.kind == "ce" else 1

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = resize_logits(logits, tuple(mask.shape[-2:]))
        if self.kind == "ce":
            return F.cross_entropy(logits.float(), mask, ignore_index=self.ignore_index)
        valid = mask != self.ignore_index
        target = (mask == 1).to(logits.dtype)
        per_pixel = F.binary_cross_entropy_with_logits(
            logits[:, 0].float(), target.float(), reduction="none"
        )
        return (per_pixel * valid).sum() / valid.sum().clamp_min(1)
