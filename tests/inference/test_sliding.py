"""Sliding-window inference: window placement, and tiles that agree with the whole image."""

import torch

from cdkd.inference.sliding import sliding_window_logits, window_starts
from cdkd.models import ChangeModel


class _Local(ChangeModel):
    """A pointwise model: its output at a pixel depends only on that pixel's inputs."""

    out_channels = 2

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        d = (x1 - x2).sum(1, keepdim=True)
        return torch.cat([-d, d], 1)


def test_window_starts_cover_the_edge() -> None:
    assert window_starts(100, 40, 30) == [0, 30, 60]
    assert window_starts(40, 64, 32) == [0]


def test_sliding_window_equals_whole_image_for_pointwise_model() -> None:
    torch.manual_seed(0)
    x1, x2 = torch.randn(1, 3, 70, 90), torch.randn(1, 3, 70, 90)
    model = _Local()
    whole = sliding_window_logits(model, x1, x2, tile=128, overlap=16)
    tiled = sliding_window_logits(model, x1, x2, tile=32, overlap=8)
    assert tiled.shape == (1, 2, 70, 90)
    assert torch.allclose(whole, tiled, atol=1e-5)


def test_any_image_size_gives_full_resolution_logits() -> None:
    from cdkd.models import create_model

    model = create_model("tinycd").eval()
    x1, x2 = torch.randn(1, 3, 37, 45), torch.randn(1, 3, 37, 45)
    with torch.no_grad():
        whole = sliding_window_logits(model, x1, x2, tile=64, overlap=16)
        tiled = sliding_window_logits(model, x1, x2, tile=32, overlap=8)
    assert whole.shape == tiled.shape == (1, 1, 37, 45)
    assert torch.isfinite(tiled).all()
