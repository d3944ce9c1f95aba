"""Tensor helpers shared by data loading, training and inference.

They sit below every subpackage so that ``data/`` and ``inference/`` need nothing from
``training/``: one rule for resizing head logits and one for normalising images.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def resize_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize head logits to ``size`` (no-op when they already match)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def normalise_image(image: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``uint8 [H, W, 3]`` to a float32 ``[3, H, W]`` tensor ``(x - mean) / std``.

    ``mean`` and ``std`` are float32 ``[3, 1, 1]`` in 0-255 units; the result is one float copy
    of the image, normalised in place.
    """
    chw = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
    return chw.sub_(mean).div_(std)
