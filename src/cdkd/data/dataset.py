"""The torch Dataset of image pairs and the collate functions for its batches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cdkd.data.io import read_image, read_mask
from cdkd.data.layout import Sample
from cdkd.data.sampler import TrainKey
from cdkd.data.transforms import PairAugment
from cdkd.ops import normalise_image
from cdkd.partition import IGNORE_INDEX

#: ImageNet statistics in 0-255 units, the normalisation of every ImageNet-initialised backbone.
IMAGENET_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
IMAGENET_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)


class ChangeDetectionDataset(Dataset[dict[str, Any]]):
    """Pairs decoded from disk, optionally augmented, normalised for the model.

    Each item is a dict with ``image1``/``image2`` (float32 ``[3, H, W]``, ``(x - mean) / std``
    with mean and std in 0-255 units), ``mask`` (int64 ``[H, W]``: 0 unchanged, 1 changed,
    255 ignore) and ``name`` (the file name in ``A/``).

    Args:
        samples: The pairs, in dataset order.
        mean: Per-channel mean (RGB, 0-255 units).
        std: Per-channel standard deviation (RGB, 0-255 units).
        augment: Training augmentation, or ``None`` for evaluation.
        seed: With ``augment``: items asked for by a :data:`~cdkd.data.sampler.TrainKey`
            ``(position, epoch)`` are augmented as ``(seed, epoch, position)`` says, the same
            in every process and after every resume.
        label_threshold: how labels are binarised (see :func:`cdkd.data.io.binarise_label`).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        augment: PairAugment | None = None,
        seed: int = 0,
        label_threshold: int | None = None,
    ) -> None:
        self.samples = list(samples)
        self.mean = torch.tensor([float(m) for m in mean], dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor([float(s) for s in std], dtype=torch.float32).view(3, 1, 1)
        self.augment = augment
        self.seed = seed
        self.label_threshold = label_threshold

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | TrainKey) -> dict[str, Any]:
        position, epoch = key if isinstance(key, tuple) else (key, None)
        sample = self.samples[position]
        image1, image2 = read_image(sample.image1), read_image(sample.image2)
        mask = read_mask(sample.label, self.label_threshold)
        if self.augment is not None:
            draw = None if epoch is None else (self.seed, epoch, position)
            image1, image2, mask = self.augment(image1, image2, mask, draw)
        return {
            "image1": normalise_image(image1, self.mean, self.std),
            "image2": normalise_image(image2, self.mean, self.std),
            "mask": torch.from_numpy(mask.astype(np.int64)),
            "name": sample.name,
        }


def pad_collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch items of possibly different sizes for evaluation.

    Images are padded with 0 and labels with the ignore index at the bottom and right up to the
    largest height and width of the batch; ``size`` (int64 ``[B, 2]``) keeps each item's
    original ``(height, width)`` so predictions can be cropped back.
    """
    sizes = torch.tensor([item["mask"].shape for item in items], dtype=torch.int64)
    height, width = (int(v) for v in sizes.max(dim=0).values)

    def pad(tensor: torch.Tensor, value: float) -> torch.Tensor:
        bottom, right = height - tensor.shape[-2], width - tensor.shape[-1]
        if bottom == 0 and right == 0:
            return tensor
        return torch.nn.functional.pad(tensor, (0, right, 0, bottom), value=value)

    return {
        "image1": torch.stack([pad(item["image1"], 0.0) for item in items]),
        "image2": torch.stack([pad(item["image2"], 0.0) for item in items]),
        "mask": torch.stack([pad(item["mask"], IGNORE_INDEX) for item in items]),
        "name": [item["name"] for item in items],
        "size": sizes,
    }
