"""Writing a synthetic dataset: file names, manifest, and the atomic swap into place."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, get_args

import cv2
import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cdkd.data.synthetic.changes import target_cars
from cdkd.data.synthetic.pair import make_pair
from cdkd.errors import ConfigError, DataError

GENERATOR_VERSION = 1
MANIFEST_NAME = "synthetic.json"
FOLDERS = ("A", "B", "label")
MIN_SIZE = 16


def _write_png(path: Path, array: np.ndarray) -> None:
    """Encode an RGB or single-channel uint8 array as PNG."""
    data = array[..., ::-1] if array.ndim == 3 else array
    if not cv2.imwrite(str(path), np.ascontiguousarray(data), [cv2.IMWRITE_PNG_COMPRESSION, 3]):
        raise DataError(f"{path}: could not write PNG")


def _split_key(split: str) -> int:
    """Stable integer for a split name, part of every seed drawn for that split."""
    return zlib.crc32(split.encode("utf-8"))


#: File naming schemes: ``padded`` (``0000.png``, ``0001.png``, ...) or ``natural``
#: (``1.png`` ... ``N.png``, as JL1-CD names its pairs).
Naming = Literal["padded", "natural"]
NAMINGS: tuple[Naming, ...] = get_args(Naming)


def _file_names(count: int, naming: Naming = "padded") -> list[str]:
    """The file names of one split's ``count`` pairs under ``naming`` (see :data:`NAMINGS`)."""
    if naming == "natural":
        return [f"{i}.png" for i in range(1, count + 1)]
    width = max(4, len(str(max(count - 1, 0))))
    return [f"{i:0{width}d}.png" for i in range(count)]


def _parameters(
    counts: Mapping[str, int], size: int, seed: int, naming: str = "padded"
) -> dict[str, Any]:
    """Validated generation parameters, as recorded in the manifest."""
    if naming not in NAMINGS:
        raise ConfigError(f"synthetic data: naming must be one of {NAMINGS}, got {naming!r}")
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < MIN_SIZE:
        raise ConfigError(f"synthetic data: size must be an integer >= {MIN_SIZE}, got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"synthetic data: seed must be a non-negative integer, got {seed!r}")
    if not counts:
        raise ConfigError("synthetic data: counts must name at least one split")
    clean: dict[str, int] = {}
    for split, count in counts.items():
        if (
            not isinstance(split, str)
            or not split
            or split.startswith(".")
            or (Path(split).name != split or split == MANIFEST_NAME)
        ):
            raise ConfigError(f"synthetic data: split name {split!r} is not a plain folder name")
        if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 0:
            raise ConfigError(
                f"synthetic data: count of split '{split}' must be >= 0, got {count!r}"
            )
        clean[split] = int(count)
    params = {
        "generator": "cdkd.synthetic",
        "version": GENERATOR_VERSION,
        "size": int(size),
        "seed": int(seed),
        "counts": clean,
    }
    if naming != "padded":  # manifests of padded datasets stay as they were written before
        params["naming"] = naming
    return params


def _read_manifest(root: Path) -> dict[str, Any] | None:
    """Parameters recorded in ``root``, or None when absent or unreadable."""
    try:
        data = json.loads((root / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_complete(root: Path, params: dict[str, Any]) -> bool:
    """Whether ``root`` already holds every file of a dataset made with ``params``."""
    if _read_manifest(root) != params:
        return False
    for split, count in params["counts"].items():
        expected = set(_file_names(count, params.get("naming", "padded")))
        for folder in FOLDERS:
            try:
                present = set(os.listdir(root / split / folder))
            except OSError:
                return False
            if not expected <= present:
                return False
    return True


def _check_replaceable(root: Path) -> None:
    """Refuse to replace anything but an empty folder or an earlier synthetic dataset."""
    if not root.exists():
        return
    if not root.is_dir():
        raise DataError(
            f"{root}: exists and is not a folder; cannot write a synthetic dataset there"
        )
    if (root / MANIFEST_NAME).is_file() or not any(root.iterdir()):
        return
    raise DataError(
        f"{root}: folder exists and is not a synthetic dataset (no {MANIFEST_NAME}); "
        "refusing to replace it"
    )


def _swap_in(staging: Path, root: Path, params: dict[str, Any]) -> None:
    """Move a finished dataset onto ``root`` with folder renames, replacing an older one.

    If another process put the same dataset in place meanwhile, that one is kept.
    """
    retired = None
    if root.exists():
        if _is_complete(root, params):
            return
        retired = staging.with_suffix(".old")
        os.rename(root, retired)
    try:
        os.rename(staging, root)
    except OSError:
        if _is_complete(root, params):
            return
        if retired is not None and not root.exists():
            os.rename(retired, root)
            retired = None
        raise
    finally:
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)


def generate_dataset(
    root: str | Path,
    counts: Mapping[str, int],
    size: int = 64,
    seed: int = 0,
    progress: bool = True,
    naming: str = "padded",
) -> Path:
    """Write a synthetic change-detection dataset to ``root/{split}/{A,B,label}/NNNN.png``.

    Images are RGB PNGs and labels single-channel 0/255 PNGs with the same file names. The
    output is a pure function of ``(counts, size, seed)``: each split and each image draws from
    its own seed, so changing one split's count leaves the other splits' files unchanged.
    If ``root`` already holds a complete dataset with these parameters (``root/synthetic.json``)
    nothing is written. Otherwise the dataset is built in a hidden folder beside ``root`` and
    renamed into place at the end, so an interrupted run never leaves a partial dataset.

    Args:
        root: Dataset folder; may exist only if empty or holding an earlier synthetic dataset.
        counts: Number of pairs per split, e.g. ``{"train": 96, "val": 24, "test": 24}``.
        size: Side of the square images in pixels.
        seed: Base seed of every random draw.
        progress: Show a progress bar while generating.
        naming: ``padded`` file names (``0000.png`` ...) or ``natural`` ones (``1.png`` ...
            ``N.png`` in every split, JL1-CD's naming).

    Returns:
        ``root`` as a :class:`~pathlib.Path`.
    """
    root = Path(root)
    params = _parameters(counts, size, seed, naming)
    if _is_complete(root, params):
        return root
    _check_replaceable(root)
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = root.parent / f".{root.name}.{os.getpid()}-{secrets.token_hex(4)}.partial"
        staging.mkdir()
    except OSError as exc:
        raise DataError(f"{root}: cannot create the synthetic dataset here ({exc})") from exc
    try:
        total = sum(params["counts"].values())
        columns = (
            TextColumn("[bold]synthetic data"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, disable=not progress, transient=True) as bar:
            task = bar.add_task("generate", total=total)
            for split, count in params["counts"].items():
                _write_split(
                    staging / split,
                    split,
                    _file_names(count, params.get("naming", "padded")),
                    params["size"],
                    params["seed"],
                    lambda: bar.advance(task),
                )
        (staging / MANIFEST_NAME).write_text(json.dumps(params, indent=2) + "\n", "utf-8")
        _swap_in(staging, root, params)
    except OSError as exc:
        raise DataError(f"{root}: writing the synthetic dataset failed ({exc})") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def _write_split(
    folder: Path, split: str, names: list[str], size: int, seed: int, tick: Callable[[], None]
) -> None:
    """Generate and write every pair of one split, the i-th pair under ``names[i]``."""
    for name in FOLDERS:
        (folder / name).mkdir(parents=True)
    key = _split_key(split)
    targets = target_cars(
        len(names), np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(key, 0)))
    )
    for index, (file_name, target) in enumerate(zip(names, targets, strict=True)):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(key, 1, index)))
        pair = make_pair(rng, size, float(target))
        _write_png(folder / "A" / file_name, pair.image1)
        _write_png(folder / "B" / file_name, pair.image2)
        _write_png(folder / "label" / file_name, pair.mask.astype(np.uint8) * 255)
        tick()
