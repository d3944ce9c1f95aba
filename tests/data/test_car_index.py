"""CAR index: exact values, the partition rule at its thresholds, caching and invalidation."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from cdkd.data import ChangeDataModule, build_car_index, discover_split
from cdkd.data import car_index as car_index_module
from cdkd.data.car_index import cache_path, label_car
from cdkd.errors import DataError
from cdkd.partition import change_area_ratio

THREE = {"name": "three", "thresholds": [0.05, 0.2], "buckets": ["small", "medium", "large"]}
TWO = {"name": "two", "thresholds": [0.10], "buckets": ["small", "large"]}
# Changed pixels of a 20x20 = 400 px label: 20 px is CAR 0.05 exactly, 80 px is 0.2 exactly.
CHANGED = {"a": 0, "b": 20, "c": 21, "d": 80, "e": 81, "f": 400, "g": 40, "h": 41}


def _label(changed: int, size: int = 20) -> np.ndarray:
    mask = np.zeros(size * size, dtype=np.uint8)
    mask[:changed] = 1
    return mask.reshape(size, size)


@pytest.fixture
def boundary_root(tmp_path: Path, pair_writer: Callable[..., None]) -> Path:
    """train and val with one pair per entry of CHANGED; test with a single small pair."""
    for split in ("train", "val"):
        for name, changed in CHANGED.items():
            pair_writer(tmp_path / split, name, _label(changed))
    pair_writer(tmp_path / "test", "z", _label(0))
    return tmp_path


def _module(root: Path, **kwargs: object) -> ChangeDataModule:
    return ChangeDataModule(root=str(root), augment="none", batch_size=2, **kwargs)


def test_index_holds_exact_car_and_size(boundary_root: Path) -> None:
    index = build_car_index(discover_split(boundary_root / "train"), progress=False)
    assert [row.name for row in index] == [f"{n}.png" for n in CHANGED]
    assert [row.car for row in index] == [c / 400 for c in CHANGED.values()]
    assert index[1].car == 0.05
    assert index[3].car == 0.2
    assert {(row.height, row.width) for row in index} == {(20, 20)}


@pytest.mark.parametrize(
    ("partition", "bucket", "names"),
    [
        (THREE, "small", ["a", "b"]),
        (THREE, "medium", ["c", "d", "g", "h"]),
        (THREE, "large", ["e", "f"]),
        (TWO, "small", ["a", "b", "c", "g"]),
        (TWO, "large", ["d", "e", "f", "h"]),
    ],
)
def test_partition_rule_at_exact_thresholds(
    boundary_root: Path, partition: dict, bucket: str, names: list[str]
) -> None:
    dm = _module(boundary_root, partition=partition, bucket=bucket)
    dm.setup("fit")
    dm.setup("test")
    for split in ("train", "val"):
        assert [row.name for row in dm.index(split)] == [f"{n}.png" for n in names]
        assert [s.name for s in dm.samples(split)] == [f"{n}.png" for n in names]
    assert [row.name for row in dm.index("test")] == ["z.png"]


def test_empty_partition_names_split_bucket_and_thresholds(
    tmp_path: Path, pair_writer: Callable[..., None]
) -> None:
    for split in ("train", "val"):
        pair_writer(tmp_path / split, "1", _label(3))
    dm = _module(tmp_path, partition=THREE, bucket="large")
    with pytest.raises(DataError, match=r"'large' of split 'train' is empty .*\[0\.05, 0\.2\]"):
        dm.setup("fit")


def test_label_car_matches_change_area_ratio_with_ignore() -> None:
    rng = np.random.default_rng(0)
    mask = rng.choice(np.array([0, 1, 255], dtype=np.uint8), size=(16, 16), p=[0.5, 0.3, 0.2])
    changed, valid = int((mask == 1).sum()), int((mask != 255).sum())
    assert label_car(mask) == changed / valid
    assert label_car(mask) == pytest.approx(float(change_area_ratio(torch.from_numpy(mask))))
    assert label_car(np.full((4, 4), 255, dtype=np.uint8)) == 0.0


def test_index_is_cached_and_reused(boundary_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    samples = discover_split(boundary_root / "train")
    cache = cache_path(boundary_root / ".cdkd_cache", boundary_root / "train")
    first = build_car_index(samples, cache_file=cache, progress=False)
    content = json.loads(cache.read_text())
    assert content["checksum"] == first.checksum
    assert len(content["rows"]) == len(CHANGED)

    def no_decoding(sample: object, label_threshold: object = None) -> None:
        raise AssertionError("the cached index should have been used")

    monkeypatch.setattr(car_index_module, "scan_sample", no_decoding)
    second = build_car_index(samples, cache_file=cache, progress=False)
    assert second.rows == first.rows
    assert second.checksum == first.checksum


def test_modified_label_invalidates_the_cache(
    boundary_root: Path, pair_writer: Callable[..., None]
) -> None:
    split = boundary_root / "train"
    cache = cache_path(boundary_root / ".cdkd_cache", split)
    before = build_car_index(discover_split(split), cache_file=cache, progress=False)
    label = split / "label" / "a.png"
    stat = label.stat()
    pair_writer(split, "a", _label(100))
    os.utime(label, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    after = build_car_index(discover_split(split), cache_file=cache, progress=False)
    assert after[0].car == 0.25
    assert after.checksum != before.checksum
    pair_writer(split, "zz", _label(0))
    grown = build_car_index(discover_split(split), cache_file=cache, progress=False)
    assert len(grown) == len(CHANGED) + 1


def test_a_touched_file_is_rescanned(boundary_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    split = boundary_root / "train"
    cache = cache_path(boundary_root / ".cdkd_cache", split)
    build_car_index(discover_split(split), cache_file=cache, progress=False)
    os.utime(split / "B" / "c.png")
    scanned: list[str] = []
    original = car_index_module.scan_sample

    def counting(
        sample: car_index_module.Sample, label_threshold: int | None = None
    ) -> tuple[car_index_module.IndexRow, bool]:
        scanned.append(sample.name)
        return original(sample, label_threshold)

    monkeypatch.setattr(car_index_module, "scan_sample", counting)
    build_car_index(discover_split(split), cache_file=cache, progress=False)
    assert len(scanned) == len(CHANGED)


def test_corrupt_cache_is_rebuilt(boundary_root: Path) -> None:
    split = boundary_root / "train"
    cache = cache_path(boundary_root / ".cdkd_cache", split)
    cache.parent.mkdir(parents=True)
    cache.write_text("{not json")
    index = build_car_index(discover_split(split), cache_file=cache, progress=False)
    assert len(index) == len(CHANGED)
    assert json.loads(cache.read_text())["checksum"] == index.checksum


def test_datamodule_caches_in_root_or_cache_dir(boundary_root: Path, tmp_path: Path) -> None:
    dm = _module(boundary_root)
    dm.setup("fit")
    assert len(list((boundary_root / ".cdkd_cache").glob("car_index-*.json"))) == 2
    elsewhere = tmp_path / "elsewhere"
    other = _module(boundary_root, cache_dir=str(elsewhere))
    other.setup("test")
    assert len(list(elsewhere.glob("car_index-test-*.json"))) == 1
    assert other.index_checksum("test") == other.index("test").checksum
    assert len(other.index_checksum("test")) == 64
