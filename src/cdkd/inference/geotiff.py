"""Change maps of GeoTIFF scene pairs of any size, read and written window by window.

The two dates must lie on one pixel grid (same CRS, transform and size). The scene is cut
into the overlapping windows of :class:`~cdkd.inference.sliding.TileGrid`, processed one row
of windows at a time; finished image rows are blended, thresholded and written at once, so
memory grows with the scene's width times the tile size, never with its area. The output is
a single-band GeoTIFF on the input grid: a 0/255 change mask, or the change probability.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from PIL import Image
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.io import DatasetReader
from rasterio.windows import Window

from cdkd.errors import ConfigError, DataError, brief
from cdkd.files import atomic_path
from cdkd.inference.sliding import Advance, TileGrid, batched_logits
from cdkd.models import ChangeModel

TIFF_SUFFIXES = (".tif", ".tiff")
#: Output value of "no data" for a 0/255 mask when the input's nodata value collides with
#: 0/255 (or does not fit in 8 bits): grey in a plain image viewer.
MASK_NODATA = 127
#: Side of the square of pixels read to estimate percentile-stretch limits.
STATS_SIZE = 1024
#: Largest corner displacement, in pixels, under which two grids count as the same.
GRID_TOLERANCE = 0.01
OVERLAY_COLOR = np.array([255.0, 0.0, 0.0])
OVERLAY_ALPHA = 0.6


@dataclass(frozen=True)
class Scaling:
    """How pixel values that are not 8-bit become the 0-255 values the models were trained on.

    ``uint8`` bands always pass through unchanged. Other data types need an explicit choice:
    ``max_value`` maps ``[0, max_value]`` linearly onto ``[0, 255]`` (e.g. 4095 for 12-bit
    sensors, 1.0 for reflectance); ``percentiles`` stretches each band of each date linearly
    between those percentiles of its valid pixels (estimated on a decimated read). Results are
    rounded and clipped to 0-255, as in an 8-bit product.
    """

    max_value: float | None = None
    percentiles: tuple[float, float] | None = None

    @classmethod
    def parse(cls, scale: Any, percentiles: Sequence[float] = (2.0, 98.0)) -> Scaling:
        """From the ``scale`` option: ``None``, a positive maximum value, or ``"percentile"``."""
        if scale is None:
            return cls()
        if isinstance(scale, str) and scale.strip().lower() == "percentile":
            low, high = (float(p) for p in percentiles)
            if not 0 <= low < high <= 100:
                raise ConfigError(
                    f"percentiles {list(percentiles)} must satisfy 0 <= low < high <= 100"
                )
            return cls(percentiles=(low, high))
        try:
            value = float(scale)
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(
                f"scale={scale!r}: expected a positive maximum value (e.g. 4095) or 'percentile'"
            )
        return cls(max_value=value)


@dataclass(frozen=True)
class SceneOptions:
    """Settings of :func:`predict_scene` (see ``conf/predict.yaml``)."""

    tile_size: int = 1024
    overlap: int = 128
    batch_size: int = 4
    bands: tuple[int, ...] = (1, 2, 3)
    scaling: Scaling = Scaling()
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


def is_geotiff(path: str | Path) -> bool:
    """Whether ``path`` is a TIFF with a georeference (a CRS or a geotransform)."""
    path = Path(path)
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return False
    try:
        with _quiet(), rasterio.open(path) as src:
            return src.crs is not None or not src.transform.is_identity
    except RasterioError:
        return False


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence GDAL's warning about plain (not georeferenced) TIFFs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


def open_scene(path: str | Path) -> DatasetReader:
    """Open a raster for reading; a file GDAL cannot read is a one-line :class:`DataError`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with _quiet():
            return rasterio.open(path)
    except RasterioError as exc:
        raise DataError(f"{path}: unreadable raster ({brief(exc)})") from exc


def check_same_grid(src1: DatasetReader, src2: DatasetReader) -> None:
    """Raise :class:`DataError` unless both scenes share CRS, size and geotransform.

    Transforms match when every image corner lands within :data:`GRID_TOLERANCE` pixels; no
    resampling is ever done silently.
    """
    name1, name2 = src1.name, src2.name
    if src1.crs != src2.crs:
        raise DataError(
            f"{name2}: CRS {_crs_text(src2)} differs from {name1} ({_crs_text(src1)}); "
            "reproject one date onto the other's grid first"
        )
    if (src1.width, src1.height) != (src2.width, src2.height):
        raise DataError(
            f"{name2}: size {src2.width}x{src2.height} differs from {name1} "
            f"({src1.width}x{src1.height}); resample one date onto the other's grid first"
        )
    t1, t2 = src1.transform, src2.transform
    corners = [(0, 0), (src1.width, 0), (0, src1.height), (src1.width, src1.height)]
    pixel = math.sqrt(abs(t1.determinant)) or 1.0
    drift = max(math.dist(_apply(t1, *c), _apply(t2, *c)) for c in corners) / pixel
    if drift > GRID_TOLERANCE:
        raise DataError(
            f"{name2}: geotransform {_affine_text(t2)} differs from {name1} "
            f"({_affine_text(t1)}, {drift:.3g} px apart); resample one date onto the other's "
            "grid first"
        )


def _apply(t: Any, col: float, row: float) -> tuple[float, float]:
    """Map pixel corner ``(col, row)`` to CRS coordinates."""
    return t.a * col + t.b * row + t.c, t.d * col + t.e * row + t.f


def _crs_text(src: DatasetReader) -> str:
    return src.crs.to_string() if src.crs is not None else "none"


def _affine_text(t: Any) -> str:
    return "(" + ", ".join(f"{v:g}" for v in tuple(t)[:6]) + ")"


class SceneReader:
    """Windowed reading of one date: selected bands scaled to 0-255 plus a validity mask."""

    def __init__(self, src: DatasetReader, bands: Sequence[int], scaling: Scaling) -> None:
        self.src = src
        self.path = Path(src.name)
        self.bands = list(bands)
        if max(self.bands) > src.count:
            raise DataError(
                f"{self.path}: has {src.count} band(s); bands={self.bands} asks for band "
                f"{max(self.bands)}"
            )
        dtypes = {src.dtypes[b - 1] for b in self.bands}
        self.dtype = np.dtype(dtypes.pop()) if len(dtypes) == 1 else np.dtype("float64")
        #: Whether some pixel can be nodata or NaN (so the output needs a nodata value).
        self.may_be_invalid = any(
            np.issubdtype(np.dtype(src.dtypes[b - 1]), np.floating)
            or MaskFlags.all_valid not in src.mask_flag_enums[b - 1]
            for b in self.bands
        )
        self.stretch = self._stretch(scaling)

    def _stretch(self, scaling: Scaling) -> tuple[np.ndarray, np.ndarray] | None:
        """``(low, high)`` per band mapped to 0 and 255, or ``None`` for 8-bit pass-through."""
        if self.dtype == np.uint8:
            return None
        if scaling.max_value is not None:
            return np.zeros((3, 1, 1)), np.full((3, 1, 1), scaling.max_value)
        if scaling.percentiles is not None:
            return self._percentile_limits(scaling.percentiles)
        bits = f"{self.dtype.itemsize * 8}-bit " if self.dtype.kind in "iu" else ""
        raise DataError(
            f"{self.path}: {bits}{self.dtype.name} pixels are not 8-bit; set scale=MAX (e.g. "
            "scale=4095 for 12-bit data, scale=1 for reflectance) or scale=percentile"
        )

    def _percentile_limits(self, percentiles: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
        factor = max(1, math.ceil(max(self.src.height, self.src.width) / STATS_SIZE))
        shape = (3, math.ceil(self.src.height / factor), math.ceil(self.src.width / factor))
        values = self._read_raw(shape=shape, resampling=Resampling.nearest)  # a plain sample
        valid = self._valid(values, self._read_masks(shape=shape))
        if not valid.any():
            raise DataError(f"{self.path}: no valid pixels to estimate the percentile stretch")
        limits = np.array([np.percentile(band[valid], percentiles) for band in values])
        low, high = limits[:, 0], np.maximum(limits[:, 1], limits[:, 0] + 1e-12)
        return low.reshape(3, 1, 1), high.reshape(3, 1, 1)

    def _read_raw(
        self,
        window: Window | None = None,
        shape: tuple[int, ...] | None = None,
        resampling: Resampling = Resampling.average,
    ) -> Any:
        try:
            return self.src.read(self.bands, window=window, out_shape=shape, resampling=resampling)
        except RasterioError as exc:
            raise DataError(f"{self.path}: read failed ({brief(exc)})") from exc

    def _read_masks(
        self, window: Window | None = None, shape: tuple[int, ...] | None = None
    ) -> Any:
        try:
            return self.src.read_masks(self.bands, window=window, out_shape=shape)
        except RasterioError as exc:
            raise DataError(f"{self.path}: read failed ({brief(exc)})") from exc

    @staticmethod
    def _valid(values: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """Valid where some band is not nodata (GDAL masks) and every band is finite."""
        valid = (masks > 0).any(axis=0)
        if np.issubdtype(values.dtype, np.floating):
            valid &= np.isfinite(values).all(axis=0)
        return valid

    def to_byte_range(self, values: np.ndarray) -> np.ndarray:
        """``float32 [3, h, w]`` in 0-255 (NaN stays NaN; callers mask invalid pixels)."""
        if self.stretch is None:
            return values.astype(np.float32)
        low, high = self.stretch
        with np.errstate(invalid="ignore"):
            scaled = (values.astype(np.float64) - low) / (high - low) * 255.0
            return np.clip(np.rint(scaled), 0, 255).astype(np.float32)

    def read(
        self, window: Window | None = None, shape: tuple[int, ...] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(float32 [3, h, w] in 0-255, bool [h, w] valid)`` of a window or decimated view."""
        values = self._read_raw(window, shape)
        valid = self._valid(values, self._read_masks(window, shape))
        return self.to_byte_range(values), valid


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
            _quiet(),
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
