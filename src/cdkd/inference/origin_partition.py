"""O-P (Origin-Partition) inference, the paper's equation (4).

M_O predicts each image; the CAR of that prediction routes the image to the teacher of its
partition (same rule and thresholds as training), and the teacher's prediction is the result.
In a batch padded from images of different sizes the CAR counts only each image's own pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from cdkd.models import ChangeModel
from cdkd.ops import resize_logits
from cdkd.partition import PartitionScheme, bucket_of


class OriginPartition(ChangeModel):
    """M_O plus one teacher per CAR bucket, behaving as a single change model.

    Images of a batch are grouped by their predicted bucket and each teacher runs once on its
    group. The predicted CAR of every image seen is kept in :attr:`predicted_cars` (in order),
    so the routing can be compared with the ground truth afterwards.

    Args:
        origin: the original model M_O.
        teachers: one model per bucket of ``scheme``, in bucket order.
        scheme: the CAR partition the teachers were trained on.
    """

    def __init__(
        self, origin: ChangeModel, teachers: Sequence[ChangeModel], scheme: PartitionScheme
    ) -> None:
        super().__init__()
        if len(teachers) != len(scheme.buckets):
            raise ValueError(f"{len(teachers)} teachers for {len(scheme.buckets)} buckets")
        self.origin = origin
        self.teachers = nn.ModuleList(teachers)
        self.scheme = scheme
        self.out_channels = teachers[0].out_channels
        self.predicted_cars: list[torch.Tensor] = []

    def route(
        self, x1: torch.Tensor, x2: torch.Tensor, sizes: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """M_O's predicted CAR of each image and the bucket it selects.

        ``sizes`` (``[B, 2]``, each image's height and width before bottom/right padding, as
        :func:`cdkd.data.dataset.pad_collate` gives) restricts each CAR to the image's own
        pixels; without it every pixel of the batch tensor counts.
        """
        height, width = x1.shape[-2:]
        logits = resize_logits(self.origin(x1, x2).float(), (height, width))
        changed = self.origin.predict(logits).float()
        if sizes is None:
            car = changed.flatten(1).mean(1)
        else:
            sizes = sizes.to(x1.device)
            rows = torch.arange(height, device=x1.device).view(1, -1, 1) < sizes[:, 0, None, None]
            cols = torch.arange(width, device=x1.device).view(1, 1, -1) < sizes[:, 1, None, None]
            inside = (rows & cols).float()
            car = (changed * inside).flatten(1).sum(1) / inside.flatten(1).sum(1).clamp_min(1)
        return car, bucket_of(car, self.scheme.thresholds)

    def forward(
        self, x1: torch.Tensor, x2: torch.Tensor, sizes: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The routed teachers' logits; ``sizes`` as in :meth:`route`."""
        car, buckets = self.route(x1, x2, sizes)
        self.predicted_cars.append(car.cpu())
        out: torch.Tensor | None = None
        for k, teacher in enumerate(self.teachers):
            idx = torch.nonzero(buckets == k).flatten()
            if idx.numel() == 0:
                continue
            logits = teacher(x1.index_select(0, idx), x2.index_select(0, idx))
            if out is None:
                out = logits.new_zeros((x1.shape[0], *logits.shape[1:]))
            out[idx] = logits
        if out is None:
            raise ValueError("O-P inference received an empty batch")
        return out

    def change_logit(self, logits: torch.Tensor) -> torch.Tensor:
        return self._reader().change_logit(logits)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return self._reader().predict(logits)

    def _reader(self) -> ChangeModel:
        """The first teacher, which reads the logits for all (they share one architecture)."""
        return cast(ChangeModel, self.teachers[0])


def routing_confusion(
    true_cars: torch.Tensor, predicted_cars: torch.Tensor, scheme: PartitionScheme
) -> dict[str, dict[str, int]]:
    """Counts of images per (ground-truth bucket, predicted bucket), as nested dicts."""
    k = len(scheme.buckets)
    true_b = bucket_of(true_cars, scheme.thresholds)
    pred_b = bucket_of(predicted_cars, scheme.thresholds)
    counts = torch.bincount(true_b * k + pred_b, minlength=k * k).view(k, k).tolist()
    return {
        f"gt_{t}": {f"pred_{p}": counts[i][j] for j, p in enumerate(scheme.buckets)}
        for i, t in enumerate(scheme.buckets)
    }
