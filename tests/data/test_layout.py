"""Dataset discovery, pairing, validation errors and the held-out validation split."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cdkd.data import ChangeDataModule, build_car_index, discover_split
from cdkd.data.layout import require_root
from cdkd.errors import DataError

ZEROS = np.zeros((32, 32), dtype=np.uint8)


def _module(root: Path, **kwargs: object) -> ChangeDataModule:
    return ChangeDataModule(root=str(root), augment="none", batch_size=2, **kwargs)


def test_pairs_are_found_by_name_in_natural_order(
    tmp_path: Path, pair_writer: Callable[..., None]
) -> None:
    for name in ("10", "2", "1", "a_3"):
        pair_writer(tmp_path / "train", name, ZEROS)
    samples = discover_split(tmp_path / "train")
    assert [s.name for s in samples] == ["1.png", "2.png", "10.png", "a_3.png"]
    first = samples[0]
    assert first.image1 == tmp_path / "train" / "A" / "1.png"
    assert first.image2 == tmp_path / "train" / "B" / "1.png"
    assert first.label == tmp_path / "train" / "label" / "1.png"


def test_sysu_folder_names_are_accepted(tmp_path: Path, pair_writer: Callable[..., None]) -> None:
    pair_writer(tmp_path / "val", "00001", ZEROS, folders=("time1", "time2", "label"))
    (sample,) = discover_split(tmp_path / "val")
    assert sample.image1.parent.name == "time1"
    assert sample.image2.parent.name == "time2"


def test_label_may_have_another_suffix_and_hidden_files_are_skipped(
    tmp_path: Path, pair_writer: Callable[..., None]
) -> None:
    split = tmp_path / "test"
    pair_writer(split, "x", ZEROS, image_suffix=".jpg", label_suffix=".png")
    pair_writer(split, "y", ZEROS, image_suffix=".tif", label_suffix=".tif")
    (split / "A" / ".DS_Store").write_bytes(b"junk")
    (split / "label" / ".ipynb_checkpoints").mkdir()
    samples = discover_split(split)
    assert [(s.name, s.label.name) for s in samples] == [("x.jpg", "x.png"), ("y.tif", "y.tif")]


def test_non_image_file_is_an_error_naming_it(
    tmp_path: Path, pair_writer: Callable[..., None]
) -> None:
    pair_writer(tmp_path / "train", "1", ZEROS)
    notes = tmp_path / "train" / "B" / "notes.txt"
    notes.write_text("not an image")
    with pytest.raises(DataError, match=r"notes\.txt: not an image file"):
        discover_split(tmp_path / "train")


@pytest.mark.parametrize("folder", ["A", "B", "label"])
def test_missing_counterpart_names_the_orphan(
    tmp_path: Path, pair_writer: Callable[..., None], folder: str
) -> None:
    split = tmp_path / "train"
    pair_writer(split, "1", ZEROS)
    pair_writer(split, "2", ZEROS)
    (split / folder / "2.png").unlink()
    with pytest.raises(DataError, match=r"2\.png: no counterpart named 2\.\* in .*" + folder):
        discover_split(split)


def test_same_stem_twice_in_a_folder_is_an_error(
    tmp_path: Path, pair_writer: Callable[..., None]
) -> None:
    split = tmp_path / "train"
    pair_writer(split, "1", ZEROS)
    Image.fromarray(ZEROS).save(split / "A" / "1.jpg")
    with pytest.raises(DataError, match=r"A/1\.(png|jpg): same name as 1\.(png|jpg)"):
        discover_split(split)


def test_empty_split_and_missing_folders_name_the_folder(tmp_path: Path) -> None:
    split = tmp_path / "train"
    for folder in ("A", "B", "label"):
        (split / folder).mkdir(parents=True)
    with pytest.raises(DataError, match=f"{split}: empty split"):
        discover_split(split)
    (tmp_path / "val" / "A").mkdir(parents=True)
    with pytest.raises(DataError, match=f"{tmp_path / 'val'}: expected sub-folders A/B/label"):
        discover_split(tmp_path / "val")
    with pytest.raises(DataError, match=f"{tmp_path / 'test'}: split folder not found"):
        discover_split(tmp_path / "test")


def test_missing_root_says_where_to_get_the_data(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"circleLZY/JL1-CD.*download_jl1cd\.py"):
        require_root(tmp_path / "JL1-CD", "jl1cd")
    with pytest.raises(DataError, match="dataset root not found"):
        _module(tmp_path / "nowhere").setup("fit")


def test_images_of_different_sizes_are_an_error_naming_the_file(
    tmp_path: Path, pair_writer: Callable[..., None]
) -> None:
    split = tmp_path / "train"
    pair_writer(split, "1", ZEROS)
    Image.fromarray(np.zeros((32, 30, 3), dtype=np.uint8)).save(split / "B" / "1.png")
    with pytest.raises(DataError, match=r"B/1\.png: size 32x30 differs from its label"):
        build_car_index(discover_split(split), progress=False)


def test_zero_byte_and_truncated_images_are_errors_naming_the_file(
    tmp_path: Path, pair_writer: Callable[..., None]
) -> None:
    split = tmp_path / "train"
    pair_writer(split, "1", ZEROS)
    pair_writer(split, "2", ZEROS)
    (split / "A" / "1.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"A/1\.png: unreadable or corrupt image \(empty file\)"):
        build_car_index(discover_split(split), progress=False)
    pair_writer(split, "1", ZEROS)
    content = (split / "B" / "2.png").read_bytes()
    (split / "B" / "2.png").write_bytes(content[: len(content) // 2])
    with pytest.raises(DataError, match=r"B/2\.png: unreadable or corrupt image"):
        build_car_index(discover_split(split), progress=False)


def test_label_values_outside_the_encodings_name_the_label(
    tmp_path: Path, pair_writer: Callable[..., None]
) -> None:
    split = tmp_path / "train"
    pair_writer(split, "1", ZEROS)
    bad = ZEROS.copy()
    bad[0, :3] = 7
    Image.fromarray(bad).save(split / "label" / "1.png")
    with pytest.raises(DataError, match=r"label/1\.png: label values \{0, 7\}"):
        build_car_index(discover_split(split), progress=False)


def test_corrupt_file_stops_setup_before_training(dataset_factory: Callable[..., Path]) -> None:
    root = dataset_factory({"train": 3, "val": 1})
    (root / "train" / "label" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DataError, match=r"train/label/2\.png: unreadable or corrupt"):
        _module(root).setup("fit")


def test_validation_is_held_out_from_the_head_of_train(
    dataset_factory: Callable[..., Path],
) -> None:
    root = dataset_factory({"train": 12})
    dm = _module(root, val_from_train=3)
    dm.setup("fit")
    assert [row.name for row in dm.index("val")] == ["0.png", "1.png", "2.png"]
    assert [row.name for row in dm.index("train")] == [f"{i}.png" for i in range(3, 12)]
    assert len(dm.val_dataloader().dataset) == 3
    assert len(dm.train_dataloader().dataset) == 9


def test_an_existing_val_folder_wins_over_val_from_train(
    dataset_factory: Callable[..., Path],
) -> None:
    root = dataset_factory({"train": 5, "val": 2})
    dm = _module(root, val_from_train=3)
    dm.setup("fit")
    assert len(dm.index("train")) == 5
    assert len(dm.index("val")) == 2
    assert dm.samples("val")[0].image1.parent.parent.name == "val"


def test_missing_val_without_val_from_train_is_an_error(
    dataset_factory: Callable[..., Path],
) -> None:
    root = dataset_factory({"train": 3})
    with pytest.raises(DataError, match=f"{root / 'val'}: validation split not found"):
        _module(root).setup("fit")
    with pytest.raises(DataError, match="val_from_train=3 leaves no training pairs"):
        _module(root, val_from_train=3).setup("fit")
