"""Every network's port computes what the official code computes, from the official weights.

Each fixture (``scripts/make_official_fixtures.py``) records an official network's state-dict
layout, the seed its values were drawn from, an input pair and the official outputs. The test
regenerates the official state dict, converts it with :mod:`cdkd.models.convert.opencd`,
loads it strictly into cdkd's network and compares the outputs.
"""

from __future__ import annotations

import pytest
import torch

from cdkd.models.base import ChangeModel
from cdkd.models.convert.opencd import from_opencd
from cdkd.models.registry import AUX_PREFIX, create_model, list_models, load_strict
from tests.models.official_fixtures import (
    FIXTURE_DIR,
    OfficialFixture,
    load_fixture,
    official_state_dict,
)

#: Output tolerance, relative to the largest official output value.
RTOL = 1e-4


def _official_model(name: str, **kwargs: object) -> tuple[ChangeModel, OfficialFixture]:
    """cdkd's ``name`` holding the fixture's official weights (auxiliary heads only if built)."""
    fixture = load_fixture(FIXTURE_DIR / f"{name}.pt")
    assert fixture.model == name
    model = create_model(name, **fixture.cdkd_kwargs, **kwargs).eval()
    own = model.state_dict()
    state = from_opencd(name, official_state_dict(fixture))
    state = {k: v for k, v in state.items() if not k.startswith(AUX_PREFIX) or k in own}
    load_strict(model, state, name)
    return model, fixture


def _assert_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.shape == expected.shape
    scale = float(expected.abs().max())
    diff = float((got - expected).abs().max())
    assert diff <= RTOL * max(1.0, scale), f"max abs diff {diff:.3g} (output scale {scale:.3g})"


def test_every_network_has_a_fixture() -> None:
    assert sorted(p.stem for p in FIXTURE_DIR.glob("*.pt")) == list_models()


@pytest.mark.parametrize("name", list_models())
def test_official_weights_give_official_outputs(name: str) -> None:
    model, fixture = _official_model(name)
    x1, x2 = fixture.inputs.split(3, dim=1)
    with torch.no_grad():
        _assert_close(model(x1, x2), fixture.outputs[0])


def test_lightcdnet_auxiliary_head_gives_official_output() -> None:
    model, fixture = _official_model("lightcdnet_s", aux_heads=True)
    assert fixture.source["output_names"][1] == "auxiliary_head.0.0"
    x1, x2 = fixture.inputs.split(3, dim=1)
    with torch.no_grad():
        _, aux = model.forward_with_aux(x1, x2)
    _assert_close(aux[0], fixture.outputs[1])
