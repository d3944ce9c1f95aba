"""Builders shared by tests: cdkd checkpoints of randomly initialised models, tool runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from cdkd.models import get_entry
from cdkd.training.module import ChangeDetectionModule

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
