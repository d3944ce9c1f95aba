"""Reading cdkd checkpoints: the recorded setup, and the network they hold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cdkd.errors import CheckpointError
from cdkd.models import ChangeModel, create_model


def read_hparams(path: str | Path) -> dict[str, Any]:
    """Hyper-parameters recorded in a cdkd (Lightning) checkpoint, without loading weights."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: unreadable or truncated checkpoint ({exc})") from exc
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or "model" not in hparams:
        raise CheckpointError(f"{path}: not a cdkd training checkpoint (no recorded model)")
    return hparams


def load_network(path: str | Path, expected_model: str | None = None) -> ChangeModel:
    """Build the network recorded in a cdkd checkpoint and load its weights.

    Raises :class:`CheckpointError` when the checkpoint is unreadable or was trained for
    another architecture than ``expected_model``.
    """
    hparams = read_hparams(path)
    name = hparams["model"]
    if expected_model is not None and name != expected_model:
        raise CheckpointError(f"{path}: checkpoint is for model '{name}', not '{expected_model}'")
    return create_model(name, weights=path, **dict(hparams.get("model_kwargs") or {}))
