"""O-P inference: the origin model's predicted CAR routes each image to one teacher."""

from __future__ import annotations

import pytest
import torch

from cdkd.data.dataset import pad_collate
from cdkd.inference.evaluate import run_evaluation
from cdkd.inference.origin_partition import OriginPartition, routing_confusion
from cdkd.models import ChangeModel
from cdkd.partition import PartitionScheme


class _Marker(ChangeModel):
    """Predicts change where image1's first channel is positive; or outputs a constant."""

    out_channels = 2

    def __init__(self, value: float | None = None) -> None:
        super().__init__()
        self.value = value
        self.calls: list[int] = []

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        self.calls.append(x1.shape[0])
        if self.value is None:
            d = x1[:, :1]
            return torch.cat([-d, d], 1)
        return torch.full((x1.shape[0], 2, 4, 4), self.value)


def test_origin_partition_routes_by_origin_predicted_car() -> None:
    scheme = PartitionScheme.create("three")
    teachers = [_Marker(float(k)) for k in range(3)]
    op = OriginPartition(_Marker(), teachers, scheme)
    x1 = -torch.ones(4, 3, 20, 20)
    for i, n in enumerate([0, 20, 21, 300]):  # predicted CAR 0, 0.05, 0.0525, 0.75
        x1[i, 0].view(-1)[:n] = 1.0
    out = op(x1, torch.zeros_like(x1))
    assert [out[i, 0, 0, 0].item() for i in range(4)] == [0.0, 0.0, 1.0, 2.0]
    assert [t.calls for t in teachers] == [[2], [1], [1]]
    predicted = torch.cat(op.predicted_cars)
    assert predicted.tolist() == pytest.approx([0.0, 0.05, 0.0525, 0.75])
    true_cars = torch.tensor([0.0, 0.3, 0.1, 0.75])
    confusion = routing_confusion(true_cars, predicted, scheme)
    assert confusion["gt_small"] == {"pred_small": 1, "pred_medium": 0, "pred_large": 0}
    assert confusion["gt_medium"] == {"pred_small": 0, "pred_medium": 1, "pred_large": 0}
    assert confusion["gt_large"] == {"pred_small": 1, "pred_medium": 0, "pred_large": 1}


def test_origin_partition_counts_only_each_images_own_pixels_in_a_padded_batch() -> None:
    scheme = PartitionScheme.create("three")
    small = -torch.ones(3, 10, 10)
    small[0].view(-1)[:8] = 1.0  # M_O predicts CAR 0.08 (medium) on the 10x10 image itself
    large = -torch.ones(3, 20, 20)
    large[0].view(-1)[:120] = 1.0  # CAR 0.3 (large)
    items = [
        {"image1": img, "image2": torch.zeros_like(img), "mask": torch.zeros(img.shape[1:]).long()}
        | {"name": name}
        for name, img in (("large.png", large), ("small.png", small))
    ]
    batch = pad_collate(items)
    assert batch["image1"].shape == (2, 3, 20, 20)
    # Over the padded 20x20 slot the small image's CAR would be 8/400 = 0.02: the small bucket.
    op = OriginPartition(_Marker(), [_Marker(float(k)) for k in range(3)], scheme)
    assert op.route(batch["image1"], batch["image2"])[0].tolist() == pytest.approx([0.3, 0.02])
    evaluation = run_evaluation(op, [batch])
    assert torch.cat(op.predicted_cars).tolist() == pytest.approx([0.3, 0.08])
    assert [t.calls for t in op.teachers] == [[], [1], [1]]
    assert evaluation.names == ["large.png", "small.png"]
