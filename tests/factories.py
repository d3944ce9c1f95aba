"""Helpers shared by tests: tiny datasets, image tensors, cdkd checkpoints of randomly
initialised models, tool runs."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import DictConfig
from PIL import Image

from cdkd.models import get_entry
from cdkd.training.module import ChangeDetectionModule

FOLDERS = ("A", "B", "label")

#: Type of the ``compose_config`` fixture: ``compose_config(name, *overrides) -> DictConfig``.
Composer = Callable[..., DictConfig]

THREE: dict[str, Any] = {
    "name": "three",
    "thresholds": [0.05, 0.2],
    "buckets": ["small", "medium", "large"],
}
TWO: dict[str, Any] = {"name": "two", "thresholds": [0.1], "buckets": ["small", "large"]}


def default_loss(model: str) -> str:
    """A task loss matching the model's head width."""
    return "ce" if get_entry(model).cls.out_channels == 2 else "bce"


def save_checkpoint(
    path: Path,
    model: str,
    bucket: str | None = None,
    partition: dict[str, Any] | None = None,
    seed: int = 0,
    **module_kwargs: Any,
) -> Path:
    """Write a cdkd training checkpoint of a randomly initialised ``model``."""
    torch.manual_seed(seed)
    module_kwargs.setdefault("loss", default_loss(model))
    module = ChangeDetectionModule(
        model=model,
        meta={"stage": "test", "bucket": bucket, "partition": partition or THREE},
        **module_kwargs,
    )
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


def save_teachers(
    folder: Path, model: str, partition: dict[str, Any] | None = None, **module_kwargs: Any
) -> dict[str, str]:
    """One checkpoint per bucket of ``partition`` (three-way by default)."""
    partition = partition or THREE
    return {
        bucket: str(
            save_checkpoint(
                folder / f"{model}-{bucket}.ckpt", model, bucket, partition, i + 1, **module_kwargs
            )
        )
        for i, bucket in enumerate(partition["buckets"])
    }


def run_tool(
    *args: str, cwd: Path, code: int | None = 0, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m ARGS`` in ``cwd``; fail the test unless it exits with ``code``.

    ``code=None`` accepts any exit status (the caller checks it).
    """
    proc = subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    if code is not None and proc.returncode != code:
        pytest.fail(
            f"{args[0]} exited {proc.returncode}, expected {code}:\n"
            f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


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


def image_pair(
    batch: int = 2, size: int | tuple[int, int] = 64, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two batches of random images ``(batch, 3, H, W)`` (``size`` is H = W, or (H, W))."""
    height, width = (size, size) if isinstance(size, int) else size
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, 3, height, width)
    return torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
