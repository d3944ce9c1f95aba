"""Reading one date of a GeoTIFF scene: georeference checks, band selection, scaling to 0-255.

Pixels are read window by window (or as a decimated view) through :class:`SceneReader`; two
dates are accepted only on one pixel grid (:func:`check_same_grid`), never resampled silently.
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
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.io import DatasetReader
from rasterio.windows import Window

from cdkd.errors import ConfigError, DataError, brief

TIFF_SUFFIXES = (".tif", ".tiff")
#: Side of the square of pixels read to estimate percentile-stretch limits.
STATS_SIZE = 1024
#: Largest corner displacement, in pixels, under which two grids count as the same.
GRID_TOLERANCE = 0.01


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


def is_geotiff(path: str | Path) -> bool:
    """Whether ``path`` is a TIFF with a georeference (a CRS or a geotransform)."""
    path = Path(path)
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return False
    try:
        with quiet_gdal(), rasterio.open(path) as src:
            return src.crs is not None or not src.transform.is_identity
    except RasterioError:
        return False


@contextlib.contextmanager
def quiet_gdal() -> Iterator[None]:
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
        with quiet_gdal():
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
        valid = np.asarray((masks > 0).any(axis=0))
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
            byte_range: np.ndarray = np.clip(np.rint(scaled), 0, 255).astype(np.float32)
        return byte_range

    def read(
        self, window: Window | None = None, shape: tuple[int, ...] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(float32 [3, h, w] in 0-255, bool [h, w] valid)`` of a window or decimated view."""
        values = self._read_raw(window, shape)
        valid = self._valid(values, self._read_masks(window, shape))
        return self.to_byte_range(values), valid
