"""ChangeFormer (Siamese SegFormer) and Changer: sizes, shapes, exchanges, flow warping."""

from __future__ import annotations

import pytest
import torch

from cdkd.errors import ConfigError
from cdkd.models import create_model
from cdkd.models.backbones import resnet_v1c
from cdkd.models.complexity import count_gmacs, count_parameters
from cdkd.models.zoo.changer import ChannelExchange, SpatialExchange, warp

#: Exact parameter counts; Table II prints them rounded to thousands.
PARAMS = {
    "changeformer_b0": 3_846_754,
    "changeformer_b1": 13_940_930,
    "changer_b0": 3_457_250,
    "changer_b1": 13_354_818,
    "changer_r18": 11_390_946,
    "changer_s50": 26_692_994,
}


def pair(n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.randn(n, 3, size, size), torch.randn(n, 3, size, size)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_exact_size(name: str) -> None:
    assert count_parameters(create_model(name)) == PARAMS[name]


@pytest.mark.parametrize("name", ["changeformer_b0", "changer_b0", "changer_r18"])
def test_quarter_resolution_logits_and_samples_do_not_mix(name: str) -> None:
    """In eval mode each sample's logits equal those of a batch of one (dates stay paired)."""
    model = create_model(name).eval()
    x1, x2 = pair(n=2, size=32)
    with torch.no_grad():
        together = model(x1, x2)
        alone = torch.cat([model(x1[i : i + 1], x2[i : i + 1]) for i in range(2)])
    assert together.shape == (2, 2, 8, 8)
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def test_spatial_exchange_swaps_even_columns() -> None:
    x1, x2 = torch.zeros(2, 3, 4, 5), torch.ones(2, 3, 4, 5)
    y1, y2 = SpatialExchange()(x1, x2)
    swapped = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0])
    assert torch.equal(y1, swapped.expand(2, 3, 4, 5))
    assert torch.equal(y2, (1 - swapped).expand(2, 3, 4, 5))


def test_channel_exchange_swaps_even_channels() -> None:
    x1 = torch.arange(4.0).view(1, 4, 1, 1).expand(2, 4, 3, 3)
    x2 = -x1
    y1, y2 = ChannelExchange()(x1, x2)
    assert y1[0, :, 0, 0].tolist() == [-0.0, 1.0, -2.0, 3.0]
    assert y2[0, :, 0, 0].tolist() == [0.0, -1.0, 2.0, -3.0]
    assert torch.equal(y1[1], y1[0])


def test_exchanges_feed_the_next_stage() -> None:
    """Exchanges change the logits of different dates but are no-ops for identical ones."""
    model = create_model("changer_b0").eval()
    plain = create_model("changer_b0", exchanges=("none",) * 4).eval()
    plain.load_state_dict(model.state_dict())
    x1, x2 = pair(n=1, size=32)
    with torch.no_grad():
        torch.testing.assert_close(model(x1, x1), plain(x1, x1))
        assert not torch.allclose(model(x1, x2), plain(x1, x2), atol=1e-4)


def test_zero_flow_warp_is_identity() -> None:
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    flow = torch.zeros(2, 2, 5, 7, dtype=torch.float64)
    torch.testing.assert_close(warp(x, flow), x)


def test_flow_is_divided_by_the_map_size() -> None:
    """A flow of 2w/(w-1) in x moves the sampling point one column right (zeros past the edge)."""
    height, width = 4, 6
    x = torch.randn(1, 2, height, width, dtype=torch.float64)
    flow = torch.zeros(1, 2, height, width, dtype=torch.float64)
    flow[:, 0] = 2 * width / (width - 1)
    out = warp(x, flow)
    torch.testing.assert_close(out[..., :-1], x[..., 1:])
    torch.testing.assert_close(out[..., -1], torch.zeros_like(out[..., -1]))


def test_resnet_backbone_keeps_timm_names() -> None:
    """The stage-wise backbone's state dict is timm's, so timm weights load unchanged."""
    backbone = create_model("changer_r18").backbone
    assert backbone.state_dict().keys() == resnet_v1c(18).state_dict().keys()
    assert backbone.widths == (64, 128, 256, 512)


def test_changer_s50_head_is_wider() -> None:
    model = create_model("changer_s50")
    assert model.backbone.widths == (256, 512, 1024, 2048)
    assert model.head.classifier[1].in_channels == 256
    assert create_model("changer_b0").head.classifier[1].in_channels == 128


@pytest.mark.parametrize("name", ["changeformer_b0", "changer_b0"])
def test_macs_are_counted_on_the_meta_device(name: str) -> None:
    """The flow warping runs on meta tensors; MACs grow with the image area."""
    small, large = count_gmacs(name, size=64), count_gmacs(name, size=128)
    assert small > 0
    assert large == pytest.approx(4 * small, rel=0.1)


def test_bad_configuration_is_one_line_error() -> None:
    with pytest.raises(ConfigError, match="backbone"):
        create_model("changer_b0", backbone="vgg16")
    with pytest.raises(ConfigError, match="exchanges"):
        create_model("changer_b0", exchanges=("none", "spatial"))
    with pytest.raises(ConfigError, match="MiT variant"):
        create_model("changeformer_b0", variant="mit_b9")
