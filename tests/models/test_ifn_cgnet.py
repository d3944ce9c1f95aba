"""IFN and CGNet: sizes, outputs, auxiliary heads, encoder freezing and reference details."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cdkd.models import backbones, create_model
from cdkd.models.zoo import cgnet
from tests.factories import image_pair

#: Parameter counts of the Open-CD builds (model_zoo.md 2.3 and 2.12).
EXACT_PARAMS = {"ifn": 35_994_813, "cgnet": 38_989_317}
#: Modules the reference builds but never runs: IFN's ca1 (1024 -> 128 -> 1024, no bias) and
#: two BNs (1024, 1536 channels); CGNet's up_layer4/3/2 (3x3 conv without bias plus BN).
UNUSED_PARAMS = {
    "ifn": 2 * 1024 * 128 + 2 * 1024 + 2 * 1536,
    "cgnet": 2 * (512 * 512 * 9 + 2 * 512) + 256 * 256 * 9 + 2 * 256,
}
SIZE = 32
#: Value the stand-in for timm's ImageNet weights fills every tensor with.
MARK = 1e-3


def _count(module: torch.nn.Module, trainable: bool | None = None) -> int:
    return sum(
        p.numel() for p in module.parameters() if trainable is None or p.requires_grad == trainable
    )


@pytest.mark.parametrize("name", sorted(EXACT_PARAMS))
def test_parameter_count_is_the_reference_count(name: str) -> None:
    model = create_model(name)
    assert _count(model) == EXACT_PARAMS[name]
    assert _count(model.unused) == UNUSED_PARAMS[name]
    assert _count(model.unused, trainable=True) == 0


def test_ifn_side_heads_are_counted_but_trained_only_with_aux_heads() -> None:
    plain, deep = create_model("ifn"), create_model("ifn", aux_heads=True)
    assert _count(deep) == _count(plain)
    side = _count(plain.side_heads)
    assert side == 513 + 257 + 129 + 65
    assert _count(plain, trainable=True) + side == _count(deep, trainable=True)


@pytest.mark.parametrize("name", sorted(EXACT_PARAMS))
@pytest.mark.parametrize("aux_heads", [False, True])
def test_every_trainable_parameter_gets_a_gradient(name: str, aux_heads: bool) -> None:
    """No trainable parameter is left out of the loss (data-parallel training needs this)."""
    model = create_model(name, aux_heads=aux_heads).train()
    logits, aux = model.forward_with_aux(*image_pair(size=SIZE))
    loss = logits.mean() + sum(a.mean() for a in aux)
    loss.backward()
    for param_name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None, param_name
            assert torch.isfinite(param.grad).all(), param_name
        else:
            assert param.grad is None, param_name


def test_ifn_outputs_full_resolution_and_side_outputs_at_strides_16_to_2() -> None:
    x1, x2 = image_pair(size=SIZE)
    model = create_model("ifn", aux_heads=True).eval()
    with torch.no_grad():
        logits, aux = model.forward_with_aux(x1, x2)
        assert torch.equal(model(x1, x2), logits)
    assert logits.shape == (2, 1, SIZE, SIZE)
    assert [a.shape[-1] for a in aux] == [SIZE // 16, SIZE // 8, SIZE // 4, SIZE // 2]
    assert all(a.shape[:2] == (2, 1) for a in aux)
    assert create_model("ifn").forward_with_aux(x1, x2)[1] == []


def test_ifn_encoder_trains_when_randomly_initialised() -> None:
    model = create_model("ifn")
    assert all(p.requires_grad for p in model.encoder.parameters())


def _vgg_file(tmp_path: Path, batch_norm: bool) -> Path:
    """A VGG-16 ``features.N`` state dict (timm's and torchvision's keys) filled with MARK."""
    features = backbones.vgg16_features(batch_norm=batch_norm)
    state = {f"features.{k}": torch.full_like(v, MARK) for k, v in features.state_dict().items()}
    state["head.fc.weight"] = torch.zeros(2, 4)  # a classifier, not part of the encoder
    path = tmp_path / "vgg.pth"
    torch.save(state, path)
    return path


def test_ifn_pretrained_loads_imagenet_vgg_and_freezes_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _vgg_file(tmp_path, batch_norm=False)
    with caplog.at_level(logging.INFO, logger="cdkd.models.pretrained"):
        model = create_model("ifn", pretrained=True, backbone_weights=str(path)).train()
    assert "frozen" in caplog.text and str(path) in caplog.text
    assert all((p == MARK).all() and not p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.levels.parameters())
    model(*image_pair(size=SIZE)).mean().backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert model.head.weight.grad is not None


def test_cgnet_pretrained_loads_imagenet_vgg_bn_and_keeps_it_trainable(tmp_path: Path) -> None:
    path = _vgg_file(tmp_path, batch_norm=True)
    model = create_model("cgnet", pretrained=True, backbone_weights=str(path))
    assert all((p == MARK).all() and p.requires_grad for p in model.encoder.parameters())


def test_cgnet_outputs_and_change_prior_at_full_resolution() -> None:
    x1, x2 = image_pair(size=SIZE)
    model = create_model("cgnet", aux_heads=True).eval()
    with torch.no_grad():
        logits, aux = model.forward_with_aux(x1, x2)
        assert torch.equal(model(x1, x2), logits)
    assert logits.shape == (2, 1, SIZE, SIZE)
    assert [a.shape for a in aux] == [(2, 1, SIZE, SIZE)]
    assert create_model("cgnet").forward_with_aux(x1, x2)[1] == []


def test_cgnet_fuses_the_dates_in_the_order_t2_t1() -> None:
    x1, x2 = image_pair(size=SIZE)
    model = create_model("cgnet").eval()
    seen: list[torch.Tensor] = []
    model.reduce[0].register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0]))
    with torch.no_grad():
        model(x1, x2)
        first, second = seen[0].chunk(2, dim=1)
        assert torch.equal(first, model._encode(x2)[0])
        assert torch.equal(second, model._encode(x1)[0])


def test_cgnet_taps_are_activated_except_the_deepest() -> None:
    """The reference's in-place ReLUs activate the first three taps, never the deepest."""
    model = create_model("cgnet").eval()
    with torch.no_grad():
        taps = model._encode(image_pair(size=SIZE)[0])
    assert [t.shape[1] for t in taps] == list(cgnet.FUSED_WIDTHS)
    assert [t.shape[-1] for t in taps] == [SIZE // 2, SIZE // 4, SIZE // 8, SIZE // 16]
    assert all((t >= 0).all() for t in taps[:3])
    assert (taps[3] < 0).any()


def test_change_guide_module_is_prior_scaled_softmax_attention() -> None:
    torch.manual_seed(0)
    module = cgnet.ChangeGuideModule(16).eval()
    with torch.no_grad():
        module.gamma.fill_(0.5)
        x = torch.randn(2, 16, 4, 4)
        prior = torch.randn(2, 1, 2, 2)
        gate = 1 + torch.sigmoid(
            F.interpolate(prior, size=(4, 4), mode="bilinear", align_corners=True)
        )
        q = (module.query(x) * gate).flatten(2)  # [B, 2, N]
        k = (module.key(x) * gate).flatten(2)
        v = (module.value(x) * gate).flatten(2)  # [B, 16, N]
        attention = torch.softmax(q.transpose(1, 2) @ k, dim=-1)  # rows: query positions
        expected = 0.5 * (v @ attention.transpose(1, 2)).view_as(x) + x
        torch.testing.assert_close(module(x, prior), expected)
        # The gain starts at zero: a fresh module passes its input through.
        assert torch.equal(cgnet.ChangeGuideModule(16)(x, prior), x)


@pytest.mark.parametrize("name", sorted(EXACT_PARAMS))
def test_runs_on_the_meta_device(name: str) -> None:
    model = create_model(name).eval().to("meta")
    x = torch.empty(1, 3, 64, 64, device="meta")
    assert model(x, x).shape == (1, 1, 64, 64)
