"""The synthetic change-detection dataset: layout, determinism, caching, CAR mix, atomicity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cdkd.data.io import read_image, read_mask
from cdkd.data.synthetic import generate_dataset, make_pair, target_cars, writer
from cdkd.errors import ConfigError, DataError
from cdkd.partition import bucket_of

THRESHOLDS = (0.05, 0.2)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _bucket_counts(cars: np.ndarray) -> np.ndarray:
    return np.bincount(bucket_of(cars, THRESHOLDS), minlength=3)


def test_layout_names_and_label_format(tmp_path: Path) -> None:
    root = generate_dataset(tmp_path / "syn", {"train": 5, "val": 3}, size=32, progress=False)
    assert root == tmp_path / "syn"
    assert sorted(p.name for p in root.iterdir()) == ["synthetic.json", "train", "val"]
    manifest = json.loads((root / "synthetic.json").read_text())
    assert manifest["counts"] == {"train": 5, "val": 3}
    assert (manifest["size"], manifest["seed"]) == (32, 0)
    for split, count in (("train", 5), ("val", 3)):
        names = [f"{i:04d}.png" for i in range(count)]
        for folder in ("A", "B", "label"):
            assert sorted(p.name for p in (root / split / folder).iterdir()) == names
        for name in names:
            assert read_image(root / split / "A" / name).shape == (32, 32, 3)
            assert read_image(root / split / "B" / name).shape == (32, 32, 3)
            with Image.open(root / split / "label" / name) as label:
                assert label.mode == "L"
                values = set(np.unique(np.asarray(label)).tolist())
            assert values <= {0, 255}
            assert read_mask(root / split / "label" / name).shape == (32, 32)


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    counts = {"train": 4, "test": 3}
    first = _files(generate_dataset(tmp_path / "a", counts, size=32, seed=3, progress=False))
    second = _files(generate_dataset(tmp_path / "b", counts, size=32, seed=3, progress=False))
    other = _files(generate_dataset(tmp_path / "c", counts, size=32, seed=4, progress=False))
    assert first == second
    images = [k for k in first if "/A/" in k or "/B/" in k]
    assert all(first[k] != other[k] for k in images)


def test_count_of_one_split_leaves_other_split_unchanged(tmp_path: Path) -> None:
    small = _files(generate_dataset(tmp_path / "a", {"train": 2, "val": 3}, 32, progress=False))
    large = _files(generate_dataset(tmp_path / "b", {"train": 6, "val": 3}, 32, progress=False))
    val = [k for k in small if k.startswith("val")]
    assert len(val) == 9
    assert all(small[k] == large[k] for k in val)


def test_second_call_does_not_rewrite_but_new_parameters_do(tmp_path: Path) -> None:
    root = tmp_path / "syn"
    generate_dataset(root, {"train": 3}, size=32, progress=False)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    before = _files(root)
    assert generate_dataset(root, {"train": 3}, size=32, progress=False) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == stamps

    generate_dataset(root, {"train": 3}, size=32, seed=1, progress=False)
    assert json.loads((root / "synthetic.json").read_text())["seed"] == 1
    after = _files(root)
    assert after.keys() == before.keys()
    assert after["train/A/0000.png"] != before["train/A/0000.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn"]


def test_missing_file_triggers_regeneration(tmp_path: Path) -> None:
    root = generate_dataset(tmp_path / "syn", {"train": 3}, size=32, progress=False)
    reference = _files(root)
    (root / "train" / "label" / "0001.png").unlink()
    generate_dataset(root, {"train": 3}, size=32, progress=False)
    assert _files(root) == reference


def test_car_mix_of_a_split_covers_every_partition(tmp_path: Path) -> None:
    root = generate_dataset(tmp_path / "syn", {"train": 60}, size=32, progress=False)
    labels = sorted((root / "train" / "label").iterdir())
    cars = np.array([read_mask(p).mean() for p in labels])
    assert (cars == 0).sum() >= 1
    assert (cars <= 0.05).mean() > 0.5
    assert cars.max() > 0.5
    assert (_bucket_counts(cars) >= 1).all()


@pytest.mark.parametrize("count", [10, 24])
def test_small_splits_still_fill_each_partition(count: int) -> None:
    rng = np.random.default_rng(11)
    targets = target_cars(count, rng)
    assert len(targets) == count
    assert (targets == 0).any()
    cars = np.array([make_pair(rng, 32, float(t)).mask.mean() for t in targets])
    assert (_bucket_counts(cars) >= 1).all()
    assert np.array_equal(bucket_of(cars, THRESHOLDS), bucket_of(targets, THRESHOLDS))
    assert np.array_equal(cars == 0, targets == 0)


def test_extreme_targets() -> None:
    rng = np.random.default_rng(5)
    none = make_pair(rng, 48, 0.0)
    assert not none.mask.any()
    assert not np.array_equal(none.image1, none.image2)
    full = make_pair(rng, 48, 1.0)
    assert full.mask.all()
    assert full.image1.dtype == np.uint8 and full.image1.shape == (48, 48, 3)


def test_changed_pixels_differ_more_than_unchanged_ones() -> None:
    rng = np.random.default_rng(2)
    changed, unchanged = [], []
    for target in (0.01, 0.03, 0.1, 0.15, 0.4, 0.7):
        pair = make_pair(rng, 64, target)
        diff = np.abs(pair.image1.astype(np.float32) - pair.image2.astype(np.float32)).mean(-1)
        changed.append(diff[pair.mask].mean())
        unchanged.append(diff[~pair.mask].mean())
    assert np.mean(changed) > 2 * np.mean(unchanged)
    assert min(c - u for c, u in zip(changed, unchanged, strict=True)) > 0


def test_interruption_leaves_no_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = writer._write_png
    calls = []

    def failing_write(path: Path, array: np.ndarray) -> None:
        calls.append(path)
        if len(calls) == 7:
            raise RuntimeError("killed")
        real_write(path, array)

    monkeypatch.setattr(writer, "_write_png", failing_write)
    with pytest.raises(RuntimeError, match="killed"):
        generate_dataset(tmp_path / "syn", {"train": 4}, size=32, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_regeneration_keeps_previous_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = generate_dataset(tmp_path / "syn", {"train": 3}, size=32, progress=False)
    before = _files(root)

    def failing_write(path: Path, array: np.ndarray) -> None:
        raise RuntimeError("killed")

    monkeypatch.setattr(writer, "_write_png", failing_write)
    with pytest.raises(RuntimeError):
        generate_dataset(root, {"train": 3}, size=32, seed=9, progress=False)
    assert _files(root) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn"]


def test_refuses_to_replace_a_foreign_folder(tmp_path: Path) -> None:
    root = tmp_path / "real_data"
    root.mkdir()
    (root / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match=r"real_data.*not a synthetic dataset"):
        generate_dataset(root, {"train": 2}, size=32, progress=False)
    assert (root / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    ("counts", "size", "seed"),
    [
        ({"train": 2}, 8, 0),
        ({"train": -1}, 32, 0),
        ({"../x": 2}, 32, 0),
        ({}, 32, 0),
        ({"train": 2}, 32, -3),
    ],
)
def test_bad_parameters_are_config_errors(
    tmp_path: Path, counts: dict[str, int], size: int, seed: int
) -> None:
    with pytest.raises(ConfigError, match="synthetic data"):
        generate_dataset(tmp_path / "syn", counts, size=size, seed=seed, progress=False)
    assert not (tmp_path / "syn").exists()


def test_natural_naming_numbers_pairs_like_jl1cd(tmp_path: Path) -> None:
    root = generate_dataset(
        tmp_path / "jl", {"train": 3, "test": 2}, size=32, progress=False, naming="natural"
    )
    for split, names in (("train", ["1.png", "2.png", "3.png"]), ("test", ["1.png", "2.png"])):
        for folder in ("A", "B", "label"):
            assert sorted(p.name for p in (root / split / folder).iterdir()) == names
    padded = generate_dataset(tmp_path / "pad", {"train": 3, "test": 2}, size=32, progress=False)
    # Same pixels, other names: the naming does not change what is drawn.
    assert (root / "train/B/2.png").read_bytes() == (padded / "train/B/0001.png").read_bytes()
    assert json.loads((root / "synthetic.json").read_text())["naming"] == "natural"
    # A request for the other naming is not mistaken for the finished dataset.
    generate_dataset(root, {"train": 3, "test": 2}, size=32, progress=False)
    assert (root / "train/A/0000.png").is_file() and not (root / "train/A/1.png").exists()


def test_unknown_naming_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="naming"):
        generate_dataset(tmp_path / "x", {"train": 1}, size=32, progress=False, naming="odd")
