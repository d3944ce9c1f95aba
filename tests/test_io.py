"""Image and mask IO: colour conversions, label encodings and one-line errors."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cdkd.data.io import read_image, read_mask, write_mask
from cdkd.errors import DataError


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


def test_write_mask_writes_zero_255_and_leaves_no_temporary(tmp_path: Path) -> None:
    write_mask(tmp_path / "out" / "p.png", np.array([[True, False]]))
    assert np.asarray(Image.open(tmp_path / "out" / "p.png")).tolist() == [[255, 0]]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["p.png"]
