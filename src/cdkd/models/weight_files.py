"""Reading weight files: one ``torch.load`` rule and the unwrapping of released state dicts."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from cdkd.errors import CheckpointError, brief


def load_checkpoint_file(path: Path, mmap: bool | None = None) -> Any:
    """The contents of a weight file or checkpoint, on the CPU.

    A torch pickle is read with tensors and plain data only (``mmap=True`` maps the tensors
    instead of reading them; ``None``: torch's default); objects of the training frameworks
    in :data:`FOREIGN_PACKAGES` (an mmengine checkpoint's message hub, numpy scalars in its
    ``meta``) are read as inert :class:`Foreign` placeholders, never by importing their code.
    A TorchScript archive or a ``.safetensors`` file gives its state dict. A file that cannot
    be read is a :class:`CheckpointError` naming it.
    """
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError:
            placeholders = _placeholders(path)
            if placeholders is None:
                raise
            with torch.serialization.safe_globals(placeholders):
                return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError as exc:
            if "TorchScript" not in str(exc):
                raise
            return torch.jit.load(str(path), map_location="cpu").state_dict()
    except Exception as exc:
        reason = brief(exc, sentences=1)
        raise CheckpointError(f"{path}: unreadable or truncated checkpoint ({reason})") from exc


#: Packages whose pickled objects a checkpoint may hold beside its tensors: those of
#: mmengine-based training (Open-CD, the official MTKD code) and numpy.
FOREIGN_PACKAGES = ("mmengine", "mmcv", "mmseg", "mmdet", "mmpretrain", "opencd", "numpy")


class Foreign:
    """Stands in for a pickled object of a foreign package: accepts and keeps its state."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _placeholders(path: Path) -> list[Any] | None:
    """:class:`Foreign` under the name of every foreign global pickled in ``path``.

    None when some global belongs to another package (it is not read) or the file cannot
    be listed: the weights-only error stands.
    """
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        return None
    if any(name.split(".", 1)[0] not in FOREIGN_PACKAGES for name in names):
        return None
    return [(Foreign, name) for name in names]


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a released weight file (see :func:`load_checkpoint_file`).

    A checkpoint's ``state_dict``/``model``/``module`` entry is taken, a ``module.`` prefix is
    dropped, and a segmentor's ``backbone.*`` keys are kept without the prefix.
    """
    obj = load_checkpoint_file(path)
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in ("state_dict", "model", "module") if k in obj), None)
        if not isinstance(inner, Mapping):
            break
        obj = inner
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if obj else {}
    if not state:
        raise CheckpointError(f"{path}: does not contain a state dict of tensors")
    for prefix in ("module.", "backbone."):
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return state
