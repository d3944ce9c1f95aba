"""Shared fixtures: tiny change-detection datasets written to temporary folders."""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Nothing in the suite may download weights: the hub client refuses, and cdkd reports it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Parallel workers (pytest-xdist, one per CPU) each compute on one thread, and so do the tools
# they start: more threads than CPUs would only make every worker wait for the others.
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)

FOLDERS = ("A", "B", "label")


def blob_mask(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A 0/1 mask with a few random rectangles of change (possibly none)."""
    height, width = size
    mask = np.zeros(size, dtype=np.uint8)
    for _ in range(int(rng.integers(0, 4))):
        y, x = int(rng.integers(0, height)), int(rng.integers(0, width))
        h, w = int(rng.integers(2, height // 2 + 2)), int(rng.integers(2, width // 2 + 2))
        mask[y : y + h, x : x + w] = 1
    return mask


def write_pair(
    split_dir: Path,
    name: str,
    mask: np.ndarray,
    folders: Sequence[str] = FOLDERS,
    image_suffix: str = ".png",
    label_suffix: str = ".png",
    seed: int = 0,
) -> None:
    """Write random RGB images for both dates and ``mask`` (0/1) as a 0/255 label."""
    rng = np.random.default_rng(seed)
    shape = (*mask.shape, 3)
    for folder in folders[:2]:
        (split_dir / folder).mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        Image.fromarray(pixels).save(split_dir / folder / f"{name}{image_suffix}")
    (split_dir / folders[2]).mkdir(parents=True, exist_ok=True)
    label = Image.fromarray((mask > 0).astype(np.uint8) * 255)
    label.save(split_dir / folders[2] / f"{name}{label_suffix}")


def make_dataset(
    root: Path,
    counts: Mapping[str, int],
    size: int | tuple[int, int] = 32,
    folders: Sequence[str] = FOLDERS,
    seed: int = 0,
) -> Path:
    """Write ``root/{split}/{A,B,label}/{i}.png`` with random images and blob labels."""
    rng = np.random.default_rng(seed)
    shape = (size, size) if isinstance(size, int) else size
    for split, count in counts.items():
        for i in range(count):
            write_pair(root / split, str(i), blob_mask(rng, shape), folders, seed=seed + i)
    return root


@pytest.fixture
def dataset_factory(tmp_path: Path) -> Callable[..., Path]:
    """Build a fresh tiny dataset under ``tmp_path`` per call (arguments of make_dataset)."""
    made = itertools.count()

    def factory(counts: Mapping[str, int], **kwargs: object) -> Path:
        return make_dataset(tmp_path / f"dataset{next(made)}", counts, **kwargs)

    return factory


@pytest.fixture
def pair_writer() -> Callable[..., None]:
    """The :func:`write_pair` helper, for tests that need labels with exact contents."""
    return write_pair
