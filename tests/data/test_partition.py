"""The CAR partition rule (paper equations (3)/(4)) and the CAR of augmented labels."""

import numpy as np
import pytest
import torch

from cdkd.partition import PartitionScheme, bucket_of, change_area_ratio


@pytest.mark.parametrize(
    ("car", "expected"),
    [(0.0, 0), (0.05, 0), (0.0500001, 1), (0.2, 1), (0.2000001, 2), (1.0, 2)],
)
def test_three_way_rule_at_exact_thresholds(car: float, expected: int) -> None:
    scheme = PartitionScheme.create("three")
    assert scheme.bucket_of(car) == expected
    assert bucket_of(np.array([car]), scheme.thresholds).tolist() == [expected]
    as_tensor = bucket_of(torch.tensor([car], dtype=torch.float64), scheme.thresholds)
    assert as_tensor.tolist() == [expected]


def test_two_way_rule_splits_at_ten_percent() -> None:
    scheme = PartitionScheme.create("two")
    assert scheme.buckets == ("small", "large")
    assert [scheme.bucket_of(c) for c in (0.0, 0.1, 0.1001, 0.9)] == [0, 0, 1, 1]


def test_float32_tensor_routing_matches_python_rule() -> None:
    # CAR values computed as float32 (as during training) must route like the float rule.
    mask = torch.zeros(1, 20, 20, dtype=torch.long)
    mask.view(-1)[:20] = 1  # exactly 20 / 400 = 0.05
    car = change_area_ratio(mask)
    assert car.dtype == torch.float32
    assert bucket_of(car, (0.05, 0.2)).item() == 0
    mask.view(-1)[:80] = 1  # exactly 0.2
    assert bucket_of(change_area_ratio(mask), (0.05, 0.2)).item() == 1


def test_change_area_ratio_excludes_ignore_pixels() -> None:
    mask = torch.tensor([[[1, 0], [255, 255]], [[255, 255], [255, 255]]])
    assert change_area_ratio(mask).tolist() == [0.5, 0.0]
    assert change_area_ratio(mask[0]).item() == 0.5


@pytest.mark.parametrize(
    ("thresholds", "buckets", "message"),
    [
        ((0.2, 0.05), ("a", "b", "c"), "strictly increasing"),
        ((0.1, 0.1), ("a", "b", "c"), "strictly increasing"),
        ((-0.1,), ("a", "b"), "must lie in"),
        ((0.1,), ("a", "b", "c"), "bucket names"),
    ],
)
def test_invalid_schemes_are_rejected(
    thresholds: tuple[float, ...], buckets: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        PartitionScheme.create("custom", thresholds, buckets)


def test_unknown_bucket_names_the_scheme() -> None:
    with pytest.raises(ValueError, match="partition 'two' has no bucket 'medium'"):
        PartitionScheme.create("two").index("medium")
