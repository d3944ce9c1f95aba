"""Image and mask IO: colour conversions, label encodings and one-line errors."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cdkd.data.io import check_label_threshold, decode_label, read_image, read_mask, write_mask
from cdkd.errors import ConfigError, DataError


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "LA"])
def test_read_image_converts_to_rgb(tmp_path: Path, mode: str) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = tmp_path / f"x-{mode}.png"
    Image.fromarray(rgb).convert(mode).save(path)
    image = read_image(path)
    assert image.shape == (5, 7, 3) and image.dtype == np.uint8
    assert image.flags.writeable
    if mode == "RGBA":
        assert np.array_equal(image, rgb)


def test_sixteen_bit_image_is_refused_not_clipped(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((4, 4), 15000, dtype=np.uint16)).save(path)
    with pytest.raises(DataError, match=r"deep\.png: image mode I;16 is not 8-bit"):
        read_image(path)


def test_truncated_and_empty_files_name_the_file(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(good)
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:60])
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"cut\.png: unreadable or corrupt image"):
        read_image(cut)
    with pytest.raises(DataError, match=r"empty\.png: unreadable or corrupt image \(empty file\)"):
        read_image(tmp_path / "empty.png")


@pytest.mark.parametrize("high", [1, 255])
def test_masks_in_both_encodings_read_as_zero_one(tmp_path: Path, high: int) -> None:
    values = np.array([[0, high], [high, 0]], dtype=np.uint8)
    Image.fromarray(values).save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png").tolist() == [[0, 1], [1, 0]]


def test_other_label_values_and_colour_labels_are_errors(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 1], [2, 0]], np.uint8)).save(tmp_path / "classes.png")
    with pytest.raises(DataError, match=r"classes\.png: label values \{0, 1, 2\}"):
        read_mask(tmp_path / "classes.png")
    colour = np.zeros((2, 2, 3), np.uint8)
    colour[0, 0] = (255, 0, 0)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(DataError, match=r"colour\.png: label is a colour image"):
        read_mask(tmp_path / "colour.png")


def test_strict_errors_name_the_threshold_option(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 3], [250, 255]], np.uint8)).save(tmp_path / "jpeg-like.png")
    with pytest.raises(DataError, match=r"\{0, 3, 250, 255\}.*data\.label_threshold=T"):
        read_mask(tmp_path / "jpeg-like.png")


def test_threshold_binarises_intermediate_values_and_reports_them(tmp_path: Path) -> None:
    path = tmp_path / "noisy.png"
    Image.fromarray(np.array([[0, 3, 127], [128, 200, 255]], np.uint8)).save(path)
    mask, intermediate = decode_label(path, threshold=128)
    assert mask.tolist() == [[0, 0, 0], [1, 1, 1]] and intermediate
    assert read_mask(path, threshold=4).tolist() == [[0, 0, 1], [1, 1, 1]]
    Image.fromarray(np.array([[0, 255]], np.uint8)).save(tmp_path / "clean.png")
    mask, intermediate = decode_label(tmp_path / "clean.png", threshold=128)
    assert mask.tolist() == [[0, 1]] and not intermediate


def test_threshold_reads_class_maps_and_colour_labels_by_value(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 1], [2, 0]], np.uint8)).save(tmp_path / "classes.png")
    assert read_mask(tmp_path / "classes.png", threshold=2).tolist() == [[0, 0], [1, 0]]
    # An RGB-saved JPEG mask: near-grey colours, read through their luma.
    colour = np.array([[[0, 2, 0], [250, 255, 252]], [[120, 130, 125], [10, 0, 4]]], np.uint8)
    Image.fromarray(colour).save(tmp_path / "rgb.png")
    mask, intermediate = decode_label(tmp_path / "rgb.png", threshold=128)
    assert mask.tolist() == [[0, 1], [0, 0]] and intermediate


@pytest.mark.parametrize("bad", [0, 256, 12.5, True, "128"])
def test_label_threshold_must_be_an_integer_in_range(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"data\.label_threshold must be an integer in 1\.\.255"):
        check_label_threshold(bad)
    assert check_label_threshold(None) is None and check_label_threshold(128) == 128


def test_write_mask_writes_zero_255_and_leaves_no_temporary(tmp_path: Path) -> None:
    write_mask(tmp_path / "out" / "p.png", np.array([[True, False]]))
    assert np.asarray(Image.open(tmp_path / "out" / "p.png")).tolist() == [[255, 0]]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["p.png"]
