"""Model zoo: ChangeStar (FarSeg and UPerNet bodies) and LightCDNet-s."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cdkd.errors import ConfigError
from cdkd.models import create_model
from cdkd.models.complexity import count_gmacs, count_parameters
from cdkd.models.registry import AUX_PREFIX
from cdkd.models.zoo.lightcdnet import CrissCrossAttention
from tests.factories import image_pair

#: Parameter counts of the Open-CD builds (Table II: 16.965, 13.952 and 0.342 M).
EXACT_PARAMS = {
    "changestar_farseg": 16_965_089,
    "changestar_upernet": 13_951_713,
    "lightcdnet_s": 342_489,
}
CHANGESTAR = ["changestar_farseg", "changestar_upernet"]
#: LightCDNet modules that Open-CD builds and runs but whose result it never uses.
LIGHTCDNET_UNUSED = ("stages.2.2.", "stages.2.3.", "attention.2.")


@pytest.mark.parametrize("name", sorted(EXACT_PARAMS))
def test_parameter_count(name: str) -> None:
    assert count_parameters(create_model(name)) == EXACT_PARAMS[name]


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("changestar_farseg", (2, 1, 8, 8)),
        ("changestar_upernet", (2, 1, 8, 8)),
        ("lightcdnet_s", (2, 2, 16, 16)),
    ],
)
def test_output_shape(name: str, shape: tuple[int, ...]) -> None:
    model = create_model(name).eval()
    with torch.no_grad():
        assert model(*image_pair(size=32)).shape == shape
    assert model.out_channels == shape[1]


@pytest.mark.parametrize("name", sorted(EXACT_PARAMS))
def test_runs_on_the_meta_device(name: str) -> None:
    assert count_gmacs(name, size=32) > 0


@pytest.mark.parametrize("name", CHANGESTAR)
def test_changestar_aux_output_is_the_reverse_direction(name: str) -> None:
    """The auxiliary logit is t2->t1: the same network reading the dates the other way round."""
    model = create_model(name, aux_heads=True).eval()
    assert count_parameters(model) == EXACT_PARAMS[name]
    x1, x2 = image_pair(size=32)
    with torch.no_grad():
        main, aux = model.forward_with_aux(x1, x2)
        assert len(aux) == 1
        torch.testing.assert_close(main, model(x1, x2))
        torch.testing.assert_close(aux[0], model(x2, x1))
        assert not torch.allclose(main, aux[0])


@pytest.mark.parametrize("name", CHANGESTAR)
def test_changestar_without_aux_heads_returns_one_direction(name: str) -> None:
    model = create_model(name).eval()
    with torch.no_grad():
        _, aux = model.forward_with_aux(*image_pair(batch=1, size=32))
    assert aux == []


@pytest.mark.parametrize("name", CHANGESTAR)
def test_changestar_both_directions_train_every_parameter(name: str) -> None:
    model = create_model(name, aux_heads=True).train()
    main, aux = model.forward_with_aux(*image_pair(size=32))
    (main.square().mean() + aux[0].square().mean()).backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, f"{param_name} gets no gradient"
        assert torch.isfinite(param.grad).all(), f"{param_name} has a non-finite gradient"


def test_changestar_rejects_an_unknown_body() -> None:
    with pytest.raises(ConfigError, match="body"):
        create_model("changestar_farseg", body="pspnet")


def test_lightcdnet_aux_head_is_built_only_on_request(tmp_path: Path) -> None:
    model = create_model("lightcdnet_s", aux_heads=True).eval()
    plain = create_model("lightcdnet_s").state_dict()
    extra = {k for k in model.state_dict() if k not in plain}
    assert extra and all(k.startswith(AUX_PREFIX) for k in extra)
    x1, x2 = image_pair(size=32)
    with torch.no_grad():
        main, aux = model.forward_with_aux(x1, x2)
        assert [a.shape for a in aux] == [(2, 2, 16, 16)]
        torch.testing.assert_close(main, model(x1, x2))
    # A checkpoint trained with the auxiliary head loads into the inference network.
    path = tmp_path / "lightcdnet_aux.pt"
    torch.save(model.state_dict(), path)
    loaded = create_model("lightcdnet_s", weights=path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x1, x2), main)


def test_lightcdnet_takes_open_cds_stage_features() -> None:
    """Stage 3's last two units and its attention never reach the output; all else does."""
    model = create_model("lightcdnet_s").train()
    model(*image_pair(size=32)).square().mean().backward()
    for name, param in model.named_parameters():
        if name.startswith(LIGHTCDNET_UNUSED):
            assert param.grad is None, name
        else:
            assert param.grad is not None, name


def test_lightcdnet_refuses_pretrained() -> None:
    with pytest.raises(ConfigError, match="pretrained"):
        create_model("lightcdnet_s", pretrained=True)


def test_criss_cross_attention_matches_a_direct_computation() -> None:
    """Each pixel attends to its column and row, counting itself once."""
    torch.manual_seed(0)
    cca = CrissCrossAttention(16, recurrence=1)
    with torch.no_grad():
        cca.gamma.fill_(0.5)
    x = torch.randn(1, 16, 3, 4)
    with torch.no_grad():
        out = cca(x)
        q, k, v = cca.query(x)[0], cca.key(x)[0], cca.value(x)[0]
    height, width = x.shape[-2:]
    expected = torch.empty_like(x)
    for h in range(height):
        for w in range(width):
            others = [(i, w) for i in range(height) if i != h] + [(h, j) for j in range(width)]
            scores = torch.stack([q[:, h, w] @ k[:, i, j] for i, j in others])
            weights = torch.softmax(scores, dim=0)
            attended = sum(wt * v[:, i, j] for wt, (i, j) in zip(weights, others, strict=True))
            expected[0, :, h, w] = 0.5 * attended + x[0, :, h, w]
    torch.testing.assert_close(out, expected)
