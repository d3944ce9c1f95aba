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
from cdkd.models.convert.formats import STUDENT, check_architecture, read_checkpoint, to_cdkd
from cdkd.models.pretrained import load_pretrained, resolve_all

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


def read_state_dict(
    path: str | Path, model: str, network: str = STUDENT
) -> tuple[dict[str, torch.Tensor], str]:
    """One network of a checkpoint in cdkd's keys for ``model``, and what the file is.

    Every format of :mod:`cdkd.models.convert.formats` is read: cdkd checkpoints, Open-CD /
    official MTKD (mmengine) checkpoints and bare state dicts of either. ``network`` picks
    the student (the only network of most files) or a teacher (``teacher_s`` ...) of an
    MTKD checkpoint. A checkpoint recorded for another architecture is refused by name.
    """
    checkpoint = read_checkpoint(path)
    check_architecture(checkpoint, model)
    return to_cdkd(checkpoint, model, network), checkpoint.describe()


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
        weights: optional local checkpoint to load, in any format of
            :mod:`cdkd.models.convert.formats` (a cdkd checkpoint, an Open-CD or official MTKD
            checkpoint, whose student is taken, a bare state dict of either, or a release
            format the model class converts itself).
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
    state, what = read_state_dict(weights, name) if weights is not None else (None, "")
    model = _build(entry, state, overrides)
    load_pretrained(model, name, files)
    if state is not None:
        load_weights(model, state, f"{weights}: {what} does not fit model '{name}'")
    return model


def model_from_state(
    name: str, state: dict[str, torch.Tensor], context: str, **overrides: Any
) -> ChangeModel:
    """Build ``name`` for a state dict in cdkd's keys and load it strictly.

    A mismatch is one :class:`CheckpointError` line starting with ``context``.
    """
    model = _build(get_entry(name), state, overrides)
    load_weights(model, state, context)
    return model


def _build(
    entry: ModelEntry, state: dict[str, torch.Tensor] | None, overrides: Mapping[str, Any]
) -> ChangeModel:
    """The entry's network: registered defaults, the shapes ``state`` implies, ``overrides``."""
    kwargs = dict(entry.defaults)
    if state is not None:
        kwargs.update(entry.cls.config_for_weights(state))
    kwargs.update(overrides)
    return entry.cls(**kwargs)


def load_weights(model: ChangeModel, state: dict[str, torch.Tensor], context: str) -> None:
    """Load a state dict in cdkd's keys (or one the network converts itself) strictly.

    Auxiliary-head weights the network was not built with are dropped: a checkpoint trained
    with them also loads into the inference network.
    """
    state = model.convert_state_dict(state)
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(AUX_PREFIX) or k in own}
    load_strict(model, state, context)


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
