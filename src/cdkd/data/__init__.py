"""Change-detection datasets: layout discovery, CAR index, augmentation and the data module.

Names are imported on first access, so ``cdkd.data.io`` stays cheap to import for tools that
only read and write images (the data module pulls in Lightning and albumentations).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "CarIndex": "cdkd.data.car_index",
    "IndexRow": "cdkd.data.car_index",
    "build_car_index": "cdkd.data.car_index",
    "ChangeDataModule": "cdkd.data.datamodule",
    "IMAGENET_MEAN": "cdkd.data.dataset",
    "IMAGENET_STD": "cdkd.data.dataset",
    "ChangeDetectionDataset": "cdkd.data.dataset",
    "pad_collate": "cdkd.data.dataset",
    "Sample": "cdkd.data.layout",
    "discover_split": "cdkd.data.layout",
    "PairAugment": "cdkd.data.transforms",
    "PhotoMetricDistortion": "cdkd.data.transforms",
    "build_augmentation": "cdkd.data.transforms",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
