"""Fixtures of the official networks: a state dict described by its keys, regenerated on demand.

A fixture (``tests/fixtures/official/<model>.pt``, written by
``scripts/make_official_fixtures.py``) holds what the official code computed for one network:
the names, shapes and dtypes of its state dict, the seed from which every value was drawn, the
input pair and the official outputs. The values themselves are not stored (they would be
hundreds of megabytes for the large networks): :func:`official_state_dict` draws them again,
key by key, exactly as the script did before running the official network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

FIXTURE_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "official"
FORMAT = "cdkd-official-fixture/1"
#: The value scheme (see :func:`draw_value`); a fixture records the one it was drawn with.
SCHEME = "randn-fan-in/1"


@dataclass(frozen=True)
class OfficialFixture:
    """One fixture: where it came from, how to rebuild its state dict, what it computed."""

    model: str
    source: dict[str, Any]
    cdkd_kwargs: dict[str, Any]
    seed: int
    keys: list[str]
    shapes: list[tuple[int, ...]]
    dtypes: list[str]
    fixed: dict[str, torch.Tensor]
    aliases: dict[str, str]
    inputs: torch.Tensor
    outputs: list[torch.Tensor]


def draw_value(key: str, shape: tuple[int, ...], dtype: torch.dtype, g: torch.Generator) -> Any:
    """The seeded value of one state-dict entry under :data:`SCHEME`.

    Matrices and kernels: ``randn / sqrt(fan_in)`` (fan-in = the product of all but the first
    dimension), so activations keep their scale through deep stacks. BatchNorm statistics:
    mean ``0.1 randn``, variance uniform in ``[0.5, 1.5)``. Other vectors: biases ``0.1 randn``,
    everything else (norm scales, attention gammas) ``1 + 0.1 randn``. Integer entries
    (``num_batches_tracked``) are zero. Every draw consumes ``g`` in key order.
    """
    if not dtype.is_floating_point:
        return torch.zeros(shape, dtype=dtype)
    if key.endswith("running_var"):
        return (torch.rand(shape, generator=g) + 0.5).to(dtype)
    if key.endswith("running_mean"):
        return (0.1 * torch.randn(shape, generator=g)).to(dtype)
    value = torch.randn(shape, generator=g)
    if len(shape) >= 2:
        return (value / math.sqrt(max(1, math.prod(shape[1:])))).to(dtype)
    if key.endswith("bias"):
        return (0.1 * value).to(dtype)
    return (1.0 + 0.1 * value).to(dtype)


def generate_state_dict(
    keys: list[str],
    shapes: list[tuple[int, ...]],
    dtypes: list[str],
    seed: int,
    fixed: dict[str, torch.Tensor] | None = None,
    aliases: dict[str, str] | None = None,
) -> dict[str, torch.Tensor]:
    """Draw every entry in order from one generator seeded with ``seed``.

    ``fixed`` entries (buffers that are structure, not weights) are taken as they are and
    ``aliases`` (a second name of a shared module's tensor) repeat the value of the key they
    name; neither draws anything.
    """
    fixed = fixed or {}
    aliases = aliases or {}
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key, shape, dtype in zip(keys, shapes, dtypes, strict=True):
        if key in fixed:
            state[key] = fixed[key].clone()
        elif key in aliases:
            state[key] = state[aliases[key]].clone()
        else:
            state[key] = draw_value(key, tuple(shape), getattr(torch, dtype), g)
    return state


def load_fixture(path: str | Path) -> OfficialFixture:
    """Read one fixture file (plain tensors and data, no pickled code)."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    if data.get("format") != FORMAT or data.get("scheme") != SCHEME:
        raise ValueError(f"{path}: not a {FORMAT} fixture with scheme {SCHEME}")
    return OfficialFixture(
        model=data["model"],
        source=data["source"],
        cdkd_kwargs=data["cdkd_kwargs"],
        seed=data["seed"],
        keys=data["keys"],
        shapes=[tuple(s) for s in data["shapes"]],
        dtypes=data["dtypes"],
        fixed=data["fixed"],
        aliases=data["aliases"],
        inputs=data["inputs"],
        outputs=data["outputs"],
    )


def official_state_dict(fixture: OfficialFixture) -> dict[str, torch.Tensor]:
    """The official network's state dict exactly as the fixture's official run used it."""
    return generate_state_dict(
        fixture.keys, fixture.shapes, fixture.dtypes, fixture.seed, fixture.fixed, fixture.aliases
    )
