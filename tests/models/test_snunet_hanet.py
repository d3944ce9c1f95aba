"""Model zoo: SNUNet-CD c16 and HANet."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cdkd.errors import ConfigError
from cdkd.models import create_model
from cdkd.models.zoo.hanet import AxialAttention, ChannelSelfAttention
from tests.factories import image_pair

#: Parameter counts of the Open-CD builds (``SNUNet_ECAM`` c16 and ``HAN`` with base 40, each
#: with its 1x1 FCN classifier), counted with Open-CD's own modules.
EXACT_PARAMS = {"snunet_c16": 3_012_178, "hanet": 3_028_166}
NAMES = sorted(EXACT_PARAMS)


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_is_exact(name: str) -> None:
    assert sum(p.numel() for p in create_model(name).parameters()) == EXACT_PARAMS[name]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("height", "width"), [(64, 64), (50, 38)])
def test_full_resolution_two_channel_logits(name: str, height: int, width: int) -> None:
    model = create_model(name).eval()
    with torch.no_grad():
        logits = model(*image_pair(batch=1, size=(height, width)))
    assert model.out_channels == 2
    assert logits.shape == (1, 2, height, width)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", NAMES)
def test_runs_on_the_meta_device(name: str) -> None:
    model = create_model(name).eval().to("meta")
    x = torch.empty(1, 3, 32, 32, device="meta")
    with torch.no_grad():
        assert model(x, x).shape == (1, 2, 32, 32)


@pytest.mark.parametrize("name", NAMES)
def test_refuses_pretrained(name: str) -> None:
    with pytest.raises(ConfigError, match="pretrained"):
        create_model(name, pretrained=True)


@pytest.mark.parametrize("name", NAMES)
def test_own_checkpoint_round_trip(name: str, tmp_path: Path) -> None:
    model = create_model(name).eval()
    path = tmp_path / f"{name}.pt"
    torch.save(model.state_dict(), path)
    loaded = create_model(name, weights=path).eval()
    x1, x2 = image_pair(batch=1, size=32)
    with torch.no_grad():
        assert torch.equal(model(x1, x2), loaded(x1, x2))


@pytest.mark.parametrize("name", NAMES)
def test_classifier_starts_small(name: str) -> None:
    """The 1x1 classifier is drawn from N(0, 0.01) with zero bias, as mmseg's heads."""
    classifier = create_model(name).head[-1]
    assert torch.count_nonzero(classifier.bias) == 0
    assert 0.005 < classifier.weight.std().item() < 0.02


def test_snunet_bottleneck_sees_only_the_second_date() -> None:
    """The first date stops at level 3: the bottleneck block runs once, on date 2."""
    model = create_model("snunet_c16").eval()
    calls: list[torch.Tensor] = []
    model.encoder[-1].register_forward_hook(lambda _m, args, _out: calls.append(args[0]))
    x1, x2 = image_pair(batch=1, size=32)
    with torch.no_grad():
        model(x1, x2)
        model(x1 + 1.0, x2)
    assert len(calls) == 2
    torch.testing.assert_close(calls[0], calls[1])


def test_snunet_output_depends_on_both_dates() -> None:
    model = create_model("snunet_c16").eval()
    x1, x2 = image_pair(batch=1, size=32)
    with torch.no_grad():
        base = model(x1, x2)
        assert not torch.allclose(model(x1 + 1.0, x2), base)
        assert not torch.allclose(model(x1, x2 + 1.0), base)


def test_hanet_gradients_reach_every_used_parameter() -> None:
    """All parameters learn except the four convs the reference builds but never calls."""
    model = create_model("hanet").train()
    model(*image_pair(size=16)).square().mean().backward()
    for name, param in model.named_parameters():
        if name.startswith("unused_convs."):
            assert param.grad is None, name
        else:
            assert param.grad is not None and torch.isfinite(param.grad).all(), name


@pytest.mark.parametrize(("axis", "line_dim"), [(-1, 2), (-2, 3)])
def test_hanet_axial_attention_stays_on_its_line(axis: int, line_dim: int) -> None:
    """Row attention mixes only pixels of the same row, column attention of the same column."""
    torch.manual_seed(0)
    attention = AxialAttention(4, axis=axis)
    with torch.no_grad():
        attention.gamma.fill_(1.0)
        x = torch.randn(1, 4, 6, 7)
        moved = x.clone()
        moved[0, :, 2, 3] += 5.0
        changed = (attention(moved) - attention(x)).abs().sum(dim=1)[0] > 1e-6
    expected = torch.zeros(6, 7, dtype=torch.bool)
    if line_dim == 2:
        expected[2, :] = True
    else:
        expected[:, 3] = True
    assert torch.equal(changed, expected)


def test_hanet_channel_attention_weights_dissimilar_channels_most() -> None:
    """Weights are softmax(max - affinity): with the residual off only gamma * mix remains."""
    attention = ChannelSelfAttention()
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]]).view(1, 2, 1, 2)
    with torch.no_grad():
        attention.gamma.fill_(1.0)
        out = attention(x) - x
    # Affinities: [[1, 0], [0, 4]]; row maxima minus affinities: [[0, 1], [4, 0]].
    weights = torch.tensor([[0.0, 1.0], [4.0, 0.0]]).softmax(dim=-1)
    expected = (weights @ x.view(2, 2)).view(1, 2, 1, 2)
    torch.testing.assert_close(out, expected)
