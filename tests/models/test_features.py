"""``ChangeModel.forward_features``: the head's input beside the very logits of ``forward``."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from cdkd.models import ChangeModel, create_model, get_entry, list_models
from cdkd.models.zoo.changestar import ChangeStar
from cdkd.models.zoo.stanet import STANet

MODELS = list_models()
SIZE = 64


def images(n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.randn(n, 3, SIZE, SIZE), torch.randn(n, 3, SIZE, SIZE)


def build(name: str) -> ChangeModel:
    torch.manual_seed(0)
    return create_model(name, **get_entry(name).info.test_overrides).eval()


@pytest.mark.parametrize("name", MODELS)
def test_features_come_with_the_logits_of_forward(name: str) -> None:
    net = build(name)
    x1, x2 = images(1)
    head = net.get_submodule(net.feature_module)
    seen: list[tuple[Any, ...]] = []
    hook = head.register_forward_hook(lambda m, args, out: seen.append((args, out)))
    with torch.no_grad():
        features, logits = net.forward_features(x1, x2)
        direct = net(x1, x2)
    hook.remove()
    assert torch.equal(logits, direct)
    assert features.dim() == 4 and features.shape[:2] == (1, net.feature_channels)
    (args, out), _ = seen  # one call in forward_features, one in the plain forward
    if isinstance(net, STANet):
        assert torch.equal(features, args[0] - args[1])
        assert torch.allclose(torch.linalg.vector_norm(features, dim=1, keepdim=True), out)
    else:
        assert features is args[0]  # the very tensor the head read
        with torch.no_grad():
            assert torch.equal(head(features), out)


def test_features_are_the_input_of_the_last_classification_layers() -> None:
    net = build("fc_siam_diff")
    x1, x2 = images()
    with torch.no_grad():
        features, logits = net.forward_features(x1, x2)
        conv = net.get_submodule("head.1")
        assert isinstance(conv, nn.Conv2d)
        assert torch.equal(conv(features), logits)  # eval: the head's dropout is identity


def test_the_main_head_s_features_come_first_with_auxiliary_outputs() -> None:
    net = create_model("changestar_farseg", aux_heads=True).eval()
    assert isinstance(net, ChangeStar)
    x1, x2 = images(1)
    with torch.no_grad(), net.capture_features() as captured:
        main, aux = net.forward_with_aux(x1, x2)
    assert len(captured) == 2 and len(aux) == 1
    with torch.no_grad():
        assert torch.equal(net.classifier(captured[0]), main)
        assert torch.equal(net.classifier(captured[1]), aux[0])


def test_no_hook_is_left_behind() -> None:
    net = build("tinycd")
    x1, x2 = images(1)
    with torch.no_grad():
        net.forward_features(x1, x2)
    assert not any(m._forward_pre_hooks for m in net.modules())


def test_a_network_without_a_feature_module_says_so() -> None:
    class Bare(ChangeModel):
        def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
            return x1 - x2

    with pytest.raises(TypeError, match="Bare names no feature_module"):
        Bare().forward_features(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4))


@pytest.mark.parametrize("name", ["fc_siam_diff", "tinycd", "changer_b0"])
def test_features_under_channels_last(name: str) -> None:
    """The hook captures the same map when the network and inputs are channels-last."""
    net = build(name)
    x1, x2 = images(1)
    with torch.no_grad():
        features, logits = net.forward_features(x1, x2)
        net = net.to(memory_format=torch.channels_last)
        last = [x.contiguous(memory_format=torch.channels_last) for x in (x1, x2)]
        features_cl, logits_cl = net.forward_features(*last)
    torch.testing.assert_close(features_cl, features, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits_cl, logits, rtol=1e-4, atol=1e-4)
