"""Change maps of GeoTIFF scene pairs of any size, read and written window by window.

The two dates must lie on one pixel grid (same CRS, transform and size). The scene is cut
into the overlapping windows of :class:`~cdkd.inference.sliding.TileGrid`, processed one row
of windows at a time; finished image rows are blended, thresholded and written at once, so
memory grows with the scene's width times the tile size, never with its area. The output is
a single-band GeoTIFF on the input grid: a 0/255 change mask, or the change probability.
Reading and georeference checks are :mod:`cdkd.inference.raster`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import torch
from PIL import Image
from rasterio.windows import Window

from cdkd.errors import ConfigError
from cdkd.files import atomic_path
from cdkd.inference.raster import Scaling, SceneReader, check_same_grid, open_scene, quiet_gdal
from cdkd.inference.sliding import Advance, TileGrid, batched_logits
from cdkd.models import ChangeModel

#: Output value of "no data" for a 0/255 mask when the input's nodata value collides with
#: 0/255 (or does not fit in 8 bits): grey in a plain image viewer.
MASK_NODATA = 127
OVERLAY_COLOR = np.array([255.0, 0.0, 0.0])
OVERLAY_ALPHA = 0.6


@dataclass(frozen=True)
class SceneOptions:
    """Settings of :func:`predict_scene` (see ``conf/predict.yaml``)."""

    tile_size: int = 1024
    overlap: int = 128
    batch_size: int = 4
    bands: tuple[int, ...] = (1, 2, 3)
    scaling: Scaling = field(default_factory=Scaling)
    probability: bool = False
    overlay: bool = False
    overlay_max_size: int = 2048
    multiple: int = 32

    def __post_init__(self) -> None:
        if self.tile_size < 1 or not 0 <= self.overlap < self.tile_size:
            raise ConfigError(
                f"tile_size={self.tile_size}, overlap={self.overlap}: need tile_size >= 1 and "
                "0 <= overlap < tile_size"
            )
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size}: must be at least 1")
        if len(self.bands) != 3 or min(self.bands) < 1:
            raise ConfigError(f"bands={list(self.bands)}: name three 1-based bands (R, G, B)")
        if self.overlay_max_size < 1:
            raise ConfigError(f"overlay_max_size={self.overlay_max_size}: must be positive")


@dataclass(frozen=True)
class SceneResult:
    """What :func:`predict_scene` wrote."""

    output: Path
    overlay: Path | None
    nodata: float | None
    changed_pixels: int
    valid_pixels: int


def output_nodata(source: float | None, probability: bool, needed: bool) -> float | None:
    """The output's nodata value: the input's when it cannot be mistaken for a result.

    A 0/255 mask keeps an integer input nodata in 1-254 and otherwise uses
    :data:`MASK_NODATA`; a probability map keeps a nodata outside [0, 1] (or NaN) and
    otherwise uses NaN. ``None`` when the input has no nodata and cannot hold invalid pixels.
    """
    if source is None and not needed:
        return None
    if probability:
        if source is not None and (math.isnan(source) or not 0.0 <= source <= 1.0):
            return float(source)
        return math.nan
    if source is not None and float(source).is_integer() and 1 <= source <= 254:
        return float(source)
    return float(MASK_NODATA)


def predict_scene(
    model: ChangeModel,
    image1: str | Path,
    image2: str | Path,
    output: str | Path,
    mean: Sequence[float],
    std: Sequence[float],
    options: SceneOptions | None = None,
    device: torch.device | None = None,
    advance: Advance | None = None,
) -> SceneResult:
    """Write the change map of a co-registered scene pair to ``output`` (GeoTIFF, atomically).

    Args:
        model: the network, in eval mode, on ``device``.
        image1: the earlier date.
        image2: the later date, on the same grid as ``image1``.
        output: the single-band GeoTIFF to write; ``<stem>_overlay.png`` beside it with
            ``options.overlay``.
        mean: per-channel normalisation mean in 0-255 units (the model's training setting).
        std: per-channel normalisation standard deviation in 0-255 units.
        options: tiling, band selection, scaling and output settings.
        device: where the model runs (CPU by default).
        advance: told how many windows finished (a progress bar); the total is
            :func:`scene_windows`.

    Raises:
        DataError: unreadable inputs, grids that differ, bands or data types that do not fit.
    """
    options = options or SceneOptions()
    device = device or torch.device("cpu")
    output = Path(output)
    with open_scene(image1) as src1, open_scene(image2) as src2:
        check_same_grid(src1, src2)
        readers = [SceneReader(src, options.bands, options.scaling) for src in (src1, src2)]
        grid = TileGrid(src1.height, src1.width, options.tile_size, options.overlap)
        source_nodata = src1.nodata if src1.nodata is not None else src2.nodata
        nodata = output_nodata(
            source_nodata, options.probability, any(r.may_be_invalid for r in readers)
        )
        profile = {
            "driver": "GTiff",
            "width": src1.width,
            "height": src1.height,
            "count": 1,
            "dtype": "float32" if options.probability else "uint8",
            "crs": src1.crs,
            "transform": src1.transform,
            "nodata": nodata,
            "compress": "lzw",
            "tiled": True,
            "blockxsize": 256,
            "blockysize": 256,
            "BIGTIFF": "IF_SAFER",
        }
        stats = _Stats(grid, options.overlay_max_size)
        norm = _Normaliser(mean, std, device)
        with (
            atomic_path(output) as tmp,
            quiet_gdal(),
            rasterio.open(tmp, "w", **profile) as dst,
            torch.inference_mode(),
        ):
            for top, end, logit, valid in _stream(model, readers, grid, norm, options, advance):
                changed = logit > 0
                stats.add(top, changed & valid, valid)
                if options.probability:
                    data = torch.sigmoid(torch.from_numpy(logit)).numpy()
                else:
                    data = changed.astype(np.uint8) * 255
                if nodata is not None:
                    data[~valid] = nodata
                dst.write(data[None], window=Window(0, top, grid.width, end - top))
        overlay = None
        if options.overlay:
            overlay = output.with_name(f"{output.stem}_overlay.png")
            _write_overlay(overlay, readers[1], stats.changed)
    return SceneResult(output, overlay, nodata, stats.changed_pixels, stats.valid_pixels)


def scene_windows(image1: str | Path, options: SceneOptions) -> int:
    """Number of windows :func:`predict_scene` runs for a scene of ``image1``'s size."""
    with open_scene(image1) as src:
        return len(TileGrid(src.height, src.width, options.tile_size, options.overlap))


class _Normaliser:
    """Bands in 0-255 to the model's normalised input; invalid pixels become the mean (0)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device):
        self.mean = torch.tensor(list(mean), dtype=torch.float32, device=device).view(3, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32, device=device).view(3, 1, 1)
        self.device = device

    def __call__(self, values: np.ndarray, valid: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(values).to(self.device)
        keep = torch.from_numpy(valid).to(self.device)
        x = torch.where(keep, (x - self.mean) / self.std, torch.zeros((), device=self.device))
        return x.unsqueeze(0)


def _stream(
    model: ChangeModel,
    readers: list[SceneReader],
    grid: TileGrid,
    norm: _Normaliser,
    options: SceneOptions,
    advance: Advance | None,
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """Finished rows ``(top, end, change logit [n, W], valid [n, W])``, top to bottom.

    Holds one band of ``window height x scene width`` accumulators: the blended change logit
    (blending the difference of two logits equals the difference of the blended logits) and
    the validity of both dates.
    """
    th, tw = grid.window_shape
    acc = np.zeros((th, grid.width), dtype=np.float32)
    valid = np.ones((th, grid.width), dtype=bool)
    col_norm = grid.col_norm.numpy()
    for r, top in enumerate(grid.rows):
        windows = _band_windows(readers, grid, top, valid, norm)
        results = batched_logits(model, windows, options.batch_size, options.multiple)
        for c, logits in enumerate(results):
            left = grid.cols[c]
            change = model.change_logit(logits)[0, 0].float().cpu()
            acc[:, left : left + tw] += (change * grid.window_weight(r, c)).numpy()
            if advance is not None:
                advance(1)
        end = grid.rows[r + 1] if r + 1 < len(grid.rows) else grid.height
        n = end - top
        weight = grid.row_norm[top:end].numpy()[:, None] * col_norm[None, :]
        yield top, end, acc[:n] / weight, valid[:n].copy()
        acc[: th - n] = acc[n:]
        acc[th - n :] = 0.0
        valid[: th - n] = valid[n:]
        valid[th - n :] = True


def _band_windows(
    readers: list[SceneReader], grid: TileGrid, top: int, valid: np.ndarray, norm: _Normaliser
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Normalised inputs of the windows of one row band; records their validity in ``valid``."""
    th, tw = grid.window_shape
    for left in grid.cols:
        window = Window(left, top, tw, th)
        (v1, ok1), (v2, ok2) = (reader.read(window) for reader in readers)
        ok = ok1 & ok2
        valid[:, left : left + tw] &= ok
        yield norm(v1, ok), norm(v2, ok)


class _Stats:
    """Counts of changed and valid pixels, and a block-wise "any change" map for the overlay."""

    def __init__(self, grid: TileGrid, max_size: int) -> None:
        self.factor = max(1, math.ceil(max(grid.height, grid.width) / max_size))
        f = self.factor
        self.changed = np.zeros((math.ceil(grid.height / f), math.ceil(grid.width / f)), bool)
        self.width = grid.width
        self.changed_pixels = 0
        self.valid_pixels = 0

    def add(self, top: int, changed: np.ndarray, valid: np.ndarray) -> None:
        self.changed_pixels += int(changed.sum())
        self.valid_pixels += int(valid.sum())
        f = self.factor
        padded = np.zeros((changed.shape[0], self.changed.shape[1] * f), dtype=bool)
        padded[:, : self.width] = changed
        per_row = padded.reshape(changed.shape[0], -1, f).any(axis=2)
        np.logical_or.at(self.changed, (top + np.arange(changed.shape[0])) // f, per_row)


def _write_overlay(path: Path, reader: SceneReader, changed: np.ndarray) -> None:
    """The later date (decimated to ``changed``'s shape) with changed blocks tinted."""
    values, valid = reader.read(shape=(3, *changed.shape))
    rgb = np.where(valid[None], np.nan_to_num(values), 0.0).transpose(1, 2, 0)
    rgb[changed] = (1 - OVERLAY_ALPHA) * rgb[changed] + OVERLAY_ALPHA * OVERLAY_COLOR
    with atomic_path(path) as tmp:
        Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(tmp, format="PNG")
