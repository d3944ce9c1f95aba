"""Whole-image and sliding-window inference for images of any size."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cdkd.models import ChangeModel
from cdkd.training.losses import resize_logits


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad ``[B, C, H, W]`` on the bottom/right (by reflection) to multiples of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def window_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets covering ``[0, length)`` with windows of ``tile``; the last is clamped."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def full_resolution_logits(
    model: ChangeModel, x1: torch.Tensor, x2: torch.Tensor, multiple: int = 32
) -> torch.Tensor:
    """Logits at the input's resolution, padding to a size the network accepts."""
    h, w = x1.shape[-2:]
    p1, p2 = pad_to_multiple(x1, multiple), pad_to_multiple(x2, multiple)
    logits = resize_logits(model(p1, p2).float(), tuple(p1.shape[-2:]))
    return logits[..., :h, :w]


def sliding_window_logits(
    model: ChangeModel,
    x1: torch.Tensor,
    x2: torch.Tensor,
    tile: int = 1024,
    overlap: int = 128,
    multiple: int = 32,
) -> torch.Tensor:
    """Full-resolution logits of an image pair, tiled when larger than ``tile``.

    Overlapping windows are averaged, and the last window of each row and column is clamped to
    the image edge, so every pixel is covered and no seam is left. Images not larger than
    ``tile`` run whole.
    """
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap {overlap} must be in [0, tile={tile})")
    h, w = x1.shape[-2:]
    if h <= tile and w <= tile:
        return full_resolution_logits(model, x1, x2, multiple)
    out: torch.Tensor | None = None
    count = torch.zeros((1, 1, h, w), device=x1.device)
    stride = tile - overlap
    for top in window_starts(h, tile, stride):
        for left in window_starts(w, tile, stride):
            window = (..., slice(top, top + tile), slice(left, left + tile))
            logits = full_resolution_logits(model, x1[window], x2[window], multiple)
            if out is None:
                out = torch.zeros((x1.shape[0], logits.shape[1], h, w), device=x1.device)
            out[window] += logits
            count[window] += 1
    if out is None:
        raise ValueError("sliding-window inference received an empty image")
    return out / count
