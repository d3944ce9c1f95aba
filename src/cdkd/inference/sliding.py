"""Whole-image and sliding-window inference for images of any size."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F

from cdkd.models import ChangeModel
from cdkd.ops import resize_logits

#: Called with the number of windows just processed (drives a progress bar).
Advance = Callable[[int], object]


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


def edge_ramp(starts: list[int], length: int, size: int, ramp: int) -> torch.Tensor:
    """Blend weights ``[len(starts), size]`` of windows along one axis.

    A window's weight rises linearly over its first ``ramp`` pixels and falls over its last
    ``ramp`` pixels, except on a side that touches the image edge (no other window covers it
    there). Merging overlapping windows with these weights leaves no visible seam, and it
    trusts each window least near its own border, where the network saw the least context.
    """
    weights = torch.ones(len(starts), size)
    if ramp == 0:
        return weights
    rise = torch.arange(1, ramp + 1, dtype=torch.float32) / (ramp + 1)
    for i, start in enumerate(starts):
        if start > 0:
            weights[i, :ramp] = torch.minimum(weights[i, :ramp], rise)
        if start + size < length:
            weights[i, -ramp:] = torch.minimum(weights[i, -ramp:], rise.flip(0))
    return weights


@dataclass(frozen=True)
class TileGrid:
    """Overlapping windows over a ``height x width`` image and the weights that merge them.

    Windows are ``tile`` pixels wide (the image size when smaller), ``tile - overlap`` apart,
    the last of each row and column clamped to the image edge. The weight of window
    ``(r, c)`` at a pixel is ``row_weights[r][y] * col_weights[c][x]``; the sum over all
    windows is ``row_norm[y] * col_norm[x]``, so results can be merged one row band at a time.
    """

    height: int
    width: int
    tile: int
    overlap: int

    def __post_init__(self) -> None:
        if not 0 <= self.overlap < self.tile:
            raise ValueError(f"overlap {self.overlap} must be in [0, tile={self.tile})")
        if self.height < 1 or self.width < 1:
            raise ValueError(f"cannot tile an empty {self.width}x{self.height} image")

    @property
    def window_shape(self) -> tuple[int, int]:
        """``(h, w)`` of every window."""
        return min(self.tile, self.height), min(self.tile, self.width)

    @cached_property
    def rows(self) -> list[int]:
        """Top offsets of the window rows."""
        return window_starts(self.height, self.tile, self.tile - self.overlap)

    @cached_property
    def cols(self) -> list[int]:
        """Left offsets of the window columns."""
        return window_starts(self.width, self.tile, self.tile - self.overlap)

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)

    @cached_property
    def row_weights(self) -> torch.Tensor:
        """``[len(rows), window height]`` blend weights along y."""
        return edge_ramp(self.rows, self.height, self.window_shape[0], self.overlap)

    @cached_property
    def col_weights(self) -> torch.Tensor:
        """``[len(cols), window width]`` blend weights along x."""
        return edge_ramp(self.cols, self.width, self.window_shape[1], self.overlap)

    @cached_property
    def row_norm(self) -> torch.Tensor:
        """``[height]`` sum of the row weights covering each image row."""
        return _axis_norm(self.rows, self.row_weights, self.height)

    @cached_property
    def col_norm(self) -> torch.Tensor:
        """``[width]`` sum of the column weights covering each image column."""
        return _axis_norm(self.cols, self.col_weights, self.width)

    def window_weight(self, r: int, c: int) -> torch.Tensor:
        """``[h, w]`` weight of window ``(r, c)``."""
        return self.row_weights[r][:, None] * self.col_weights[c][None, :]


def _axis_norm(starts: list[int], weights: torch.Tensor, length: int) -> torch.Tensor:
    norm = torch.zeros(length)
    for start, weight in zip(starts, weights, strict=True):
        norm[start : start + weight.numel()] += weight
    return norm


def full_resolution_logits(
    model: ChangeModel, x1: torch.Tensor, x2: torch.Tensor, multiple: int = 32
) -> torch.Tensor:
    """Logits at the input's resolution, padding to a size the network accepts."""
    h, w = x1.shape[-2:]
    p1, p2 = pad_to_multiple(x1, multiple), pad_to_multiple(x2, multiple)
    logits = resize_logits(model(p1, p2).float(), (p1.shape[-2], p1.shape[-1]))
    return logits[..., :h, :w]


def batched_logits(
    model: ChangeModel,
    pairs: Iterable[tuple[torch.Tensor, torch.Tensor]],
    batch_size: int = 1,
    multiple: int = 32,
) -> Iterator[torch.Tensor]:
    """Full-resolution logits of each ``(x1, x2)`` window pair, in order.

    Windows of one size are stacked ``batch_size`` at a time into one forward pass; ``pairs``
    is consumed lazily, so a reader behind it only holds one batch in memory.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    firsts: list[torch.Tensor] = []
    seconds: list[torch.Tensor] = []
    for x1, x2 in pairs:
        firsts.append(x1)
        seconds.append(x2)
        if len(firsts) == batch_size:
            yield from _run_batch(model, firsts, seconds, multiple)
            firsts, seconds = [], []
    if firsts:
        yield from _run_batch(model, firsts, seconds, multiple)


def _run_batch(
    model: ChangeModel, firsts: list[torch.Tensor], seconds: list[torch.Tensor], multiple: int
) -> Iterator[torch.Tensor]:
    logits = full_resolution_logits(model, torch.cat(firsts), torch.cat(seconds), multiple)
    yield from torch.split(logits, [x.shape[0] for x in firsts])


def sliding_window_logits(
    model: ChangeModel,
    x1: torch.Tensor,
    x2: torch.Tensor,
    tile: int = 1024,
    overlap: int = 128,
    multiple: int = 32,
    batch_size: int = 1,
    advance: Advance | None = None,
) -> torch.Tensor:
    """Full-resolution logits of an image pair, tiled when larger than ``tile``.

    Overlapping windows are blended with :func:`edge_ramp` weights and the last window of each
    row and column is clamped to the image edge, so every pixel is covered and no seam is
    left. Images not larger than ``tile`` run whole. ``batch_size`` windows share a forward
    pass; ``advance`` is told how many windows each pass finished.
    """
    h, w = x1.shape[-2:]
    grid = TileGrid(h, w, tile, overlap)
    if h <= tile and w <= tile:
        logits = full_resolution_logits(model, x1, x2, multiple)
        if advance is not None:
            advance(1)
        return logits
    th, tw = grid.window_shape
    spots = [(r, c) for r in range(len(grid.rows)) for c in range(len(grid.cols))]

    def windows() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for r, c in spots:
            top, left = grid.rows[r], grid.cols[c]
            crop = (..., slice(top, top + th), slice(left, left + tw))
            yield x1[crop], x2[crop]

    out = torch.zeros((x1.shape[0], model.out_channels, h, w), device=x1.device)
    results = batched_logits(model, windows(), batch_size, multiple)
    for (r, c), logits in zip(spots, results, strict=True):
        top, left = grid.rows[r], grid.cols[c]
        weight = grid.window_weight(r, c).to(x1.device)
        out[..., top : top + th, left : left + tw] += logits * weight
        if advance is not None:
            advance(1)
    norm = grid.row_norm[:, None] * grid.col_norm[None, :]
    return out / norm.to(x1.device)
