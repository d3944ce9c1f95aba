"""Reading the network of a cdkd training checkpoint, for training and inference alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cdkd.errors import CheckpointError
from cdkd.models.base import ChangeModel
from cdkd.models.registry import create_model
from cdkd.models.weight_files import load_checkpoint_file


def read_hparams(path: str | Path, expected_model: str | None = None) -> dict[str, Any]:
    """Hyper-parameters recorded in a cdkd (Lightning) checkpoint.

    With ``expected_model``, a checkpoint trained for another architecture is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    ckpt = load_checkpoint_file(path, mmap=True)
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or "model" not in hparams:
        raise CheckpointError(f"{path}: not a cdkd training checkpoint (no recorded model)")
    if expected_model is not None and hparams["model"] != expected_model:
        raise CheckpointError(
            f"{path}: checkpoint is for model '{hparams['model']}', not '{expected_model}'"
        )
    return hparams


def is_cdkd_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a cdkd training checkpoint (not a release of another project)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    ckpt = load_checkpoint_file(path, mmap=True)
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    return isinstance(hparams, dict) and "model" in hparams


def load_network(path: str | Path, expected_model: str | None = None) -> ChangeModel:
    """Build the network recorded in a cdkd checkpoint and load its weights.

    With ``expected_model``, a checkpoint of another project (Open-CD, the official MTKD
    code, a bare state dict: see :mod:`cdkd.models.convert.formats`) builds that model with
    its registered defaults. Raises :class:`CheckpointError` when the checkpoint is
    unreadable or was trained for another architecture than ``expected_model``.
    """
    if expected_model is not None and not is_cdkd_checkpoint(path):
        return create_model(expected_model, weights=path)
    hparams = read_hparams(path, expected_model)
    # The checkpoint holds every weight: sources of initial weights (e.g. a foundation
    # encoder's file, which may not exist on this machine) are not read again.
    recorded = dict(hparams.get("model_kwargs") or {})
    kwargs = {k: v for k, v in recorded.items() if not k.endswith("weights")}
    return create_model(hparams["model"], weights=path, **kwargs)
