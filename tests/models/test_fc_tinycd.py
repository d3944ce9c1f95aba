"""Model zoo: FC-EF, FC-Siam-conc, FC-Siam-diff and TinyCD, and the blocks the zoo shares."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from cdkd.errors import CdkdError, ConfigError
from cdkd.models import create_model, list_models
from cdkd.models.complexity import count_parameters
from cdkd.models.layers import ConvNormAct, pad_like
from tests.factories import image_pair

FIXTURES = Path(__file__).parents[1] / "fixtures"
TINYCD_WEIGHTS = Path(__file__).resolve().parents[3] / "shared/weights/tinycd"

#: Parameter counts of the Open-CD builds, counted with Open-CD's own modules.
EXACT_PARAMS = {
    "fc_ef": 1_352_642,
    "fc_siam_conc": 1_548_050,
    "fc_siam_diff": 1_352_210,
    "tinycd": 285_000,
}
#: Sizes the paper's Table II is matched against, in millions of parameters.
TABLE_PARAMS = {
    "fc_ef": 1.352642,
    "fc_siam_conc": 1.548050,
    "fc_siam_diff": 1.352210,
    "tinycd": 0.285128,
}
#: TinyCD with the authors' longer classifier (32 -> 16 -> 8 -> 1, no PReLU on the logit).
AUTHORS_HEAD = {"head_hidden": (16, 8), "head_final_prelu": False}
OUT_CHANNELS = {"fc_ef": 2, "fc_siam_conc": 2, "fc_siam_diff": 2, "tinycd": 1}


def test_registry_lists_the_four_models() -> None:
    assert set(EXACT_PARAMS) <= set(list_models())


@pytest.mark.parametrize("name", sorted(EXACT_PARAMS))
def test_parameter_count_matches_table_ii(name: str) -> None:
    count = count_parameters(create_model(name))
    assert count == EXACT_PARAMS[name]
    assert abs(count / 1e6 - TABLE_PARAMS[name]) / TABLE_PARAMS[name] < 0.002


def test_tinycd_authors_head_parameter_count() -> None:
    assert count_parameters(create_model("tinycd", **AUTHORS_HEAD)) == 285_128


@pytest.mark.parametrize("name", sorted(EXACT_PARAMS))
def test_forward_shape_and_gradients(name: str) -> None:
    model = create_model(name).train()
    x1, x2 = image_pair()
    logits = model(x1, x2)
    assert logits.shape == (2, OUT_CHANNELS[name], 64, 64)
    assert model.out_channels == OUT_CHANNELS[name]
    logits.square().mean().backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, f"{param_name} gets no gradient"
        assert torch.isfinite(param.grad).all(), f"{param_name} has a non-finite gradient"


@pytest.mark.parametrize("name", ["fc_ef", "fc_siam_conc", "fc_siam_diff"])
def test_fc_models_keep_odd_input_sizes(name: str) -> None:
    """Pooling drops a row/column at odd sizes; the decoder pads back to the skip's size."""
    model = create_model(name).eval()
    with torch.no_grad():
        assert model(*image_pair(batch=1, size=50)).shape == (1, 2, 50, 50)


def test_fc_models_refuse_pretrained() -> None:
    with pytest.raises(ConfigError, match="pretrained"):
        create_model("fc_siam_diff", pretrained=True)


@pytest.mark.parametrize("name", sorted(EXACT_PARAMS))
def test_own_checkpoint_round_trip(name: str, tmp_path: Path) -> None:
    model = create_model(name).eval()
    path = tmp_path / f"{name}.pt"
    torch.save(model.state_dict(), path)
    loaded = create_model(name, weights=path).eval()
    x1, x2 = image_pair(batch=1)
    with torch.no_grad():
        assert torch.equal(model(x1, x2), loaded(x1, x2))


def test_tinycd_own_checkpoint_keeps_the_authors_head(tmp_path: Path) -> None:
    """A TinyCD saved with the longer head reloads without repeating the head arguments."""
    model = create_model("tinycd", **AUTHORS_HEAD).eval()
    path = tmp_path / "tinycd_long_head.pt"
    torch.save(model.state_dict(), path)
    loaded = create_model("tinycd", weights=path).eval()
    assert count_parameters(loaded) == 285_128
    x1, x2 = image_pair(batch=1)
    with torch.no_grad():
        assert torch.equal(model(x1, x2), loaded(x1, x2))


@pytest.mark.parametrize(
    ("saved", "target"),
    [("fc_ef", "tinycd"), ("tinycd", "fc_siam_conc"), ("fc_ef", "fc_siam_diff")],
)
def test_weights_of_another_model_are_rejected(saved: str, target: str, tmp_path: Path) -> None:
    path = tmp_path / f"{saved}.pt"
    torch.save(create_model(saved).state_dict(), path)
    with pytest.raises((ValueError, CdkdError), match=re.escape(str(path))):
        create_model(target, weights=path)


@pytest.mark.parametrize("release", ["levir", "whu"])
def test_tinycd_reproduces_the_authors_release(release: str) -> None:
    """Our TinyCD, loaded from the authors' checkpoint, matches their network's output.

    The fixture ``tests/fixtures/tinycd_<release>.pt`` was made outside this repository with
    the authors' public code (github.com/AndreaCodegoni/Tiny_model_4_CD, ``ChangeClassifier``
    with ``pretrained=False``, so torchvision built EfficientNet-B4 without downloading, then
    ``<release>_best.pth`` loaded and ``eval()``). Input: a seeded 1x3x64x64 pair in [0, 1]
    (smooth random texture; the second date adds noise and two painted rectangles), normalised
    as the authors' dataset does (torchvision ``Normalize`` with the ImageNet mean/std). Stored:
    ``image1``/``image2`` (the normalised inputs), ``prob`` (the network's sigmoid output) and
    ``logit`` (the input of that sigmoid, taken with a forward hook on the last 1x1 conv).
    ``whu_best.pth`` stores the last mixing block one module deeper
    (``_mixing_mask.2._mixing._convmix``) than the code expects, so its keys were renamed to
    ``_mixing_mask.2._convmix`` before loading; the tensors are unchanged.
    """
    weights = TINYCD_WEIGHTS / f"{release}_best.pth"
    if not weights.is_file():
        pytest.skip(f"{weights} is not available")
    fixture = torch.load(FIXTURES / f"tinycd_{release}.pt", weights_only=True)
    model = create_model("tinycd", weights=weights).eval()
    assert count_parameters(model) == 285_128
    with torch.no_grad():
        logit = model(fixture["image1"], fixture["image2"])
    assert logit.shape == fixture["prob"].shape == (1, 1, 64, 64)
    torch.testing.assert_close(torch.sigmoid(logit), fixture["prob"], atol=1e-5, rtol=0)
    torch.testing.assert_close(logit, fixture["logit"], atol=1e-4, rtol=1e-5)


def test_conv_norm_act_is_the_plain_sequential_it_replaces() -> None:
    """Same keys, same seeded initial weights and same output as the layers written out."""
    torch.manual_seed(0)
    plain = torch.nn.Sequential(
        torch.nn.Conv2d(4, 6, 3, padding=1), torch.nn.PReLU(), torch.nn.BatchNorm2d(6)
    )
    torch.manual_seed(0)
    block = ConvNormAct(4, 6, 3, bias=True, act="prelu", act_first=True)
    assert list(block.state_dict()) == list(plain.state_dict())
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in block.state_dict().items())
    x = torch.randn(2, 4, 9, 7)
    assert torch.equal(block(x), plain(x))
    unit = ConvNormAct(4, 6, norm=None, dropout=0.2, transposed=True)
    kinds = [type(m) for m in unit]
    assert kinds == [torch.nn.ConvTranspose2d, torch.nn.ReLU, torch.nn.Dropout2d]
    assert unit[0].bias is None


def test_pad_like_edge_pads_to_the_skip_size() -> None:
    x = torch.arange(4.0).view(1, 1, 2, 2)
    padded = pad_like(x, torch.zeros(1, 1, 3, 3))
    assert padded.shape[-2:] == (3, 3)
    assert torch.equal(padded[..., 2, :2], x[..., 1, :]) and padded[0, 0, 2, 2] == 3.0
    assert pad_like(x, torch.zeros(1, 1, 2, 2)) is x
