"""Reading and writing images and change masks, with one-line errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cdkd.errors import DataError
from cdkd.files import atomic_path

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
#: Pillow modes whose values are 8-bit and convert to RGB without clipping.
EIGHT_BIT_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr"})


def _open(path: Path) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
    except FileNotFoundError as exc:
        raise DataError(f"{path}: file not found") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if path.is_file() and path.stat().st_size == 0:
            reason = "empty file"
        elif isinstance(exc, UnidentifiedImageError):
            reason = "not a known image format"  # Pillow's text repeats the path
        else:
            reason = str(exc)
        raise DataError(f"{path}: unreadable or corrupt image ({reason})") from exc
    return img


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to ``uint8 [H, W, 3]`` RGB (grayscale, palette and RGBA converted)."""
    path = Path(path)
    img = _open(path)
    if img.mode not in EIGHT_BIT_MODES:
        raise DataError(f"{path}: image mode {img.mode} is not 8-bit; convert it to 8-bit RGB")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.array(img, dtype=np.uint8)


def binarise_label(values: np.ndarray, path: str | Path) -> np.ndarray:
    """Map a decoded label to ``uint8 {0, 1}``.

    Accepted encodings: 0/255 masks (255 means changed) and 0/1 masks. Any other value
    (e.g. class indices 0/1/2 or anti-aliased edges) is an error naming the file, since
    guessing would silently change the ground truth.
    """
    present = np.flatnonzero(np.bincount(values.ravel(), minlength=256))
    if set(present.tolist()) <= {0, 255}:
        return (values >= 128).astype(np.uint8)
    if set(present.tolist()) <= {0, 1}:
        return values.astype(np.uint8)
    shown = ", ".join(str(v) for v in present[:8]) + (", ..." if len(present) > 8 else "")
    raise DataError(f"{path}: label values {{{shown}}} are neither 0/255 nor 0/1")


def read_mask(path: str | Path) -> np.ndarray:
    """Decode a change label to ``uint8 [H, W]`` with 0 = unchanged and 1 = changed."""
    path = Path(path)
    img = _open(path)
    if img.mode in ("RGB", "RGBA"):
        rgb = np.asarray(img.convert("RGB"))
        if not (
            np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
        ):
            raise DataError(
                f"{path}: label is a colour image; expected a single-channel 0/255 mask"
            )
        values = rgb[..., 0]
    elif img.mode in ("L", "P", "1", "LA"):
        values = np.asarray(img.convert("L"), dtype=np.uint8)
    else:
        arr = np.asarray(img)
        if arr.ndim != 2 or arr.max(initial=0) > 255 or arr.min(initial=0) < 0:
            raise DataError(f"{path}: label mode {img.mode} is not an 8-bit single-channel mask")
        values = arr.astype(np.uint8)
    return binarise_label(values, path)


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    """Write a boolean/0-1 change map as a 0/255 single-channel PNG, atomically."""
    path = Path(path)
    data = (np.asarray(mask) > 0).astype(np.uint8) * 255
    with atomic_path(path) as tmp:
        Image.fromarray(data).save(tmp, format="PNG")
