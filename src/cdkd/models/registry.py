"""Model registry: ``create_model(name, **overrides)`` and ``list_models()``.

Each registered name maps to a :class:`~cdkd.models.base.ChangeModel` subclass plus default
constructor arguments, so one class can back several sizes (``changer_b0``/``changer_b1``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from cdkd.errors import CheckpointError
from cdkd.models.base import ChangeModel
from cdkd.models.pretrained import load_pretrained, resolve_all
from cdkd.models.weight_files import load_checkpoint_file

M = TypeVar("M", bound=type[ChangeModel])


@dataclass(frozen=True)
class ModelInfo:
    """What the model-zoo table says about a registered model.

    Attributes:
        family: "CNN", "Transformer" or "Foundation model" (the paper's three groups).
        backbone: the backbone as Table II names it.
        paper_params: Table II parameter count in millions (the true count where Table II's
            value carries the x1.024 unit slip).
        paper_gflops: Table II computation at 512x512 in G (multiply-adds), or None.
        pretrained: the pretrained weights the network starts from ("none" if nothing).
        distill_target: which head output the student stage distils.
        test_overrides: constructor overrides that shrink the network for quick tests (e.g.
            fewer blocks); the size test always uses the real configuration.
    """

    family: str
    backbone: str
    paper_params: float
    paper_gflops: float | None = None
    pretrained: str = "none"
    distill_target: str = "the decode head's logits"
    test_overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its class, the constructor defaults of this name, its zoo facts."""

    name: str
    cls: type[ChangeModel]
    defaults: dict[str, Any] = field(default_factory=dict)
    info: ModelInfo | None = None


_REGISTRY: dict[str, ModelEntry] = {}

#: Name prefix of a network's training-only auxiliary heads (built with ``aux_heads=True``).
AUX_PREFIX = "aux_"

#: Attribute under which cdkd's LightningModules hold the network; a training checkpoint's
#: ``state_dict`` keys carry it as a prefix.
NETWORK_PREFIX = "net."


def register_model(name: str, info: ModelInfo | None = None, **defaults: Any) -> Callable[[M], M]:
    """Class decorator registering ``cls`` under ``name`` with constructor ``defaults``."""

    def wrap(cls: M) -> M:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is registered twice")
        _REGISTRY[name] = ModelEntry(name, cls, dict(defaults), info)
        return cls

    return wrap


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    _import_zoo()
    return sorted(_REGISTRY)


def get_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``, with a helpful error for unknown names."""
    _import_zoo()
    if name not in _REGISTRY:
        raise KeyError(f"unknown model '{name}'; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def read_state_dict(path: str | Path, model: str | None = None) -> dict[str, torch.Tensor]:
    """Read a network state dict from a plain ``.pth`` file or a cdkd training checkpoint.

    With ``model``, a cdkd checkpoint recorded for another model is refused by name.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    obj = load_checkpoint_file(path)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        recorded = (obj.get("hyper_parameters") or {}).get("model")
        if model is not None and isinstance(recorded, str) and recorded != model:
            raise CheckpointError(f"{path}: checkpoint is for model '{recorded}', not '{model}'")
        obj = obj["state_dict"]
        prefix = NETWORK_PREFIX
        if any(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix) :]: v for k, v in obj.items() if k.startswith(prefix)}
    elif isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: does not contain a state dict of tensors")
    return obj


def create_model(
    name: str,
    weights: str | Path | None = None,
    pretrained: bool = False,
    backbone_weights: str | Path | Mapping[str, Any] | None = None,
    **overrides: Any,
) -> ChangeModel:
    """Build a registered model.

    Args:
        name: a name from :func:`list_models`.
        weights: optional local checkpoint to load (our own format, a Lightning checkpoint, or
            a release format the model class knows how to convert).
        pretrained: start every pretrained part (:data:`cdkd.models.pretrained.PARTS`) from
            its released weights: a ``backbone_weights`` file, else the hub cache, else a
            download. Off by default: the network is randomly initialised.
        backbone_weights: local weight files of the pretrained parts, a path for a
            single-part network or ``{part: path}``; given parts load even without
            ``pretrained``.
        **overrides: constructor arguments replacing the registered defaults.
    """
    entry = get_entry(name)
    files = resolve_all(name, pretrained, backbone_weights)
    state = read_state_dict(weights, name) if weights is not None else None
    kwargs = dict(entry.defaults)
    if state is not None:
        kwargs.update(entry.cls.config_for_weights(state))
    kwargs.update(overrides)
    model = entry.cls(**kwargs)
    load_pretrained(model, name, files)
    if state is not None:
        state = model.convert_state_dict(state)
        own = model.state_dict()
        # A checkpoint trained with auxiliary heads also loads into the inference network.
        state = {k: v for k, v in state.items() if not k.startswith(AUX_PREFIX) or k in own}
        load_strict(model, state, f"{weights}: weights do not fit model '{name}'")
    return model


def load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], context: str) -> None:
    """Load ``state`` into ``model`` requiring every key and shape to match.

    On a mismatch raises :class:`CheckpointError` whose single line starts with ``context`` and
    names a few of the missing, unexpected or mis-shaped keys.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape of", shapes)):
        if keys:
            more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
            problems.append(f"{label} {', '.join(keys[:3])}{more}")
    if problems:
        raise CheckpointError(f"{context}: {'; '.join(problems)}")
    model.load_state_dict(state, strict=True)


def _import_zoo() -> None:
    """Import the modules that register models (idempotent)."""
    import cdkd.models.zoo  # noqa: F401
