"""Change area ratio (CAR) and the CAR partition rule shared by every stage.

The paper's equations (3)/(4): with thresholds ``th_1 < th_2 < ...`` an image whose CAR is
``<= th_1`` is *small*, ``th_1 < CAR <= th_2`` is *medium*, and so on; the last bucket takes
everything above the last threshold. Data partitioning, per-sample teacher routing during
distillation and O-P inference all call :func:`bucket_of`, so the boundary convention cannot
drift between them.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
import torch

from cdkd.errors import ConfigError

IGNORE_INDEX = 255

SCHEMES: dict[str, tuple[tuple[float, ...], tuple[str, ...]]] = {
    "three": ((0.05, 0.2), ("small", "medium", "large")),
    "two": ((0.10,), ("small", "large")),
}


@dataclass(frozen=True)
class PartitionScheme:
    """Named CAR thresholds and the names of the buckets they delimit."""

    name: str
    thresholds: tuple[float, ...]
    buckets: tuple[str, ...]

    def __post_init__(self) -> None:
        th = self.thresholds
        if not th:
            raise ValueError(f"partition '{self.name}': at least one threshold is needed")
        if any(not 0.0 <= t <= 1.0 for t in th):
            raise ValueError(f"partition '{self.name}': thresholds {list(th)} must lie in [0, 1]")
        if any(a >= b for a, b in itertools.pairwise(th)):
            raise ValueError(
                f"partition '{self.name}': thresholds {list(th)} must be strictly increasing"
            )
        if len(self.buckets) != len(th) + 1:
            raise ValueError(
                f"partition '{self.name}': {len(th)} thresholds need {len(th) + 1} bucket names, "
                f"got {list(self.buckets)}"
            )

    @classmethod
    def create(
        cls,
        name: str,
        thresholds: Sequence[float] | None = None,
        buckets: Sequence[str] | None = None,
    ) -> PartitionScheme:
        """Build a scheme by name (``three``/``two``), optionally overriding its thresholds."""
        if name in SCHEMES:
            default_th, default_names = SCHEMES[name]
        elif thresholds is None or buckets is None:
            raise ValueError(
                f"unknown partition '{name}': use one of {sorted(SCHEMES)} "
                "or give both thresholds and bucket names"
            )
        else:
            default_th, default_names = (), ()
        th = tuple(float(t) for t in (default_th if thresholds is None else thresholds))
        names = tuple(default_names if buckets is None else buckets)
        return cls(name=name, thresholds=th, buckets=names)

    @classmethod
    def from_config(cls, partition: Mapping[str, Any]) -> PartitionScheme:
        """The scheme of a ``partition`` config group (``name``, optional ``thresholds`` and
        ``buckets``), validated; a bad one is a ``ConfigError`` naming the problem."""
        try:
            return cls.create(
                str(partition.get("name", "three")),
                partition.get("thresholds"),
                partition.get("buckets"),
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc

    def index(self, bucket: str) -> int:
        """Position of a bucket name in this scheme."""
        if bucket not in self.buckets:
            raise ValueError(
                f"partition '{self.name}' has no bucket '{bucket}' (buckets: {list(self.buckets)})"
            )
        return self.buckets.index(bucket)

    def bucket_of(self, car: float | np.ndarray | torch.Tensor) -> int | np.ndarray | torch.Tensor:
        """Bucket index of each CAR value under this scheme."""
        return bucket_of(car, self.thresholds)


@overload
def bucket_of(car: torch.Tensor, thresholds: Sequence[float]) -> torch.Tensor: ...
@overload
def bucket_of(car: float, thresholds: Sequence[float]) -> int: ...
@overload
def bucket_of(car: np.ndarray, thresholds: Sequence[float]) -> int | np.ndarray: ...
def bucket_of(
    car: float | np.ndarray | torch.Tensor, thresholds: Sequence[float]
) -> int | np.ndarray | torch.Tensor:
    """Bucket index of ``car``: 0 when ``car <= thresholds[0]``, k when ``th_k < car <= th_{k+1}``.

    Works on Python floats, numpy arrays and tensors (on any device, without a host sync).
    """
    if isinstance(car, torch.Tensor):
        bounds = torch.as_tensor(thresholds, dtype=car.dtype, device=car.device)
        return torch.bucketize(car, bounds, right=False)
    index = np.searchsorted(np.asarray(thresholds, dtype=np.float64), car, side="left")
    return int(index) if np.ndim(index) == 0 else index


def change_area_ratio(mask: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """CAR of each label in a batch: changed pixels / valid pixels, ignore pixels excluded.

    ``mask`` is ``[B, H, W]`` (or ``[H, W]``) with 0 = unchanged, 1 = changed and
    ``ignore_index`` for pixels that carry no label (e.g. rotation padding). An image whose
    pixels are all ignored has CAR 0.
    """
    batched = mask if mask.dim() == 3 else mask.unsqueeze(0)
    flat = batched.reshape(batched.shape[0], -1)
    valid = flat != ignore_index
    changed = (flat == 1) & valid
    ratio = changed.sum(1).to(torch.float32) / valid.sum(1).clamp_min(1).to(torch.float32)
    return ratio if mask.dim() == 3 else ratio[0]
