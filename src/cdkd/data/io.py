"""Reading and writing images and change masks, with one-line errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cdkd.errors import ConfigError, DataError
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


#: How an error about label values tells the user to binarise them instead.
THRESHOLD_HINT = "set data.label_threshold=T to read values >= T as change (128 for JPEG labels)"


def binarise_label(
    values: np.ndarray, path: str | Path, threshold: int | None = None
) -> tuple[np.ndarray, bool]:
    """Map decoded label values to ``uint8 {0, 1}``, and say whether any was intermediate.

    Strict (``threshold=None``): 0/255 masks (255 means changed) and 0/1 masks are accepted;
    any other value (class indices 0/1/2, JPEG or anti-aliasing noise) is an error naming the
    file, since guessing would silently change the ground truth. With ``threshold`` T, values
    ``>= T`` are change and the rest unchanged, whatever they are (a 0/1 mask then needs T=1).
    The flag is true when the label has values other than 0/255 and other than 0/1.
    """
    present = set(np.flatnonzero(np.bincount(values.ravel(), minlength=256)).tolist())
    clean_255, clean_01 = present <= {0, 255}, present <= {0, 1}
    if threshold is not None:
        return (values >= threshold).astype(np.uint8), not (clean_255 or clean_01)
    if clean_255:
        return (values >= 128).astype(np.uint8), False
    if clean_01:
        return values.astype(np.uint8), False
    listed = sorted(present)
    shown = ", ".join(str(v) for v in listed[:8]) + (", ..." if len(listed) > 8 else "")
    raise DataError(f"{path}: label values {{{shown}}} are neither 0/255 nor 0/1; {THRESHOLD_HINT}")


def decode_label(path: str | Path, threshold: int | None = None) -> tuple[np.ndarray, bool]:
    """A change label as ``uint8 [H, W]`` (0 unchanged, 1 changed) and its intermediate flag.

    Colour labels are errors in strict mode. With ``threshold`` they are converted to
    grayscale (ITU-R 601 luma, as the official pipeline decodes labels) and thresholded, so
    RGB-saved JPEG masks work; a colour-coded label would not read as intended.
    """
    path = Path(path)
    img = _open(path)
    if img.mode in ("RGB", "RGBA"):
        rgb = np.asarray(img.convert("RGB"))
        grey = np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
        if grey:
            values = rgb[..., 0]
        elif threshold is not None:
            values = np.asarray(img.convert("RGB").convert("L"), dtype=np.uint8)
        else:
            raise DataError(
                f"{path}: label is a colour image; expected a single-channel 0/255 mask "
                f"({THRESHOLD_HINT})"
            )
    elif img.mode in ("L", "P", "1", "LA"):
        values = np.asarray(img.convert("L"), dtype=np.uint8)
    else:
        arr = np.asarray(img)
        if arr.ndim != 2 or arr.max(initial=0) > 255 or arr.min(initial=0) < 0:
            raise DataError(f"{path}: label mode {img.mode} is not an 8-bit single-channel mask")
        values = arr.astype(np.uint8)
    return binarise_label(values, path, threshold)


def read_mask(path: str | Path, threshold: int | None = None) -> np.ndarray:
    """Decode a change label to ``uint8 [H, W]`` with 0 = unchanged and 1 = changed."""
    return decode_label(path, threshold)[0]


def check_same_size(
    path: str | Path, array: np.ndarray, reference: str | Path, reference_array: np.ndarray
) -> None:
    """Refuse an array read from ``path`` whose shape differs from the one read from
    ``reference`` (the two dates of a pair, a prediction and its ground truth)."""
    if array.shape != reference_array.shape:
        raise DataError(
            f"{path}: size {array.shape[1]}x{array.shape[0]} differs from "
            f"{reference} ({reference_array.shape[1]}x{reference_array.shape[0]})"
        )


def check_label_threshold(value: object) -> int | None:
    """``data.label_threshold`` as an int in 1..255, or ``None`` (strict)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 255:
        raise ConfigError(
            f"data.label_threshold must be an integer in 1..255 or null, got {value!r}"
        )
    return value


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    """Write a boolean/0-1 change map as a 0/255 single-channel PNG, atomically."""
    path = Path(path)
    data = (np.asarray(mask) > 0).astype(np.uint8) * 255
    with atomic_path(path) as tmp:
        Image.fromarray(data).save(tmp, format="PNG")
