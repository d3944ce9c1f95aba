"""File names with spaces and unicode work end to end; a symlink loop is a clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cdkd.data import ChangeDataModule
from cdkd.errors import DataError
from tests.factories import write_pair

NAMES = ["scene one", "Überschwemmung_2023", "变化 3"]


def test_names_with_spaces_and_unicode_load(tmp_path: Path) -> None:
    for split in ("train", "val", "test"):
        for i, name in enumerate(NAMES):
            mask = np.zeros((32, 32), np.uint8)
            mask[: 4 * (i + 1)] = 1
            write_pair(tmp_path / split, name, mask, seed=i)
    dm = ChangeDataModule(root=str(tmp_path), batch_size=2, augment="none")
    dm.setup("test")
    names = [row.name for row in dm.index("test")]
    batch = next(iter(dm.dataloader("test")))
    assert batch["name"] == names[:2] and batch["image1"].shape == (2, 3, 32, 32)
    assert sorted(names) == sorted(f"{n}.png" for n in NAMES)
    assert [round(row.car, 4) for row in dm.index("test")] == [
        round(4 * (NAMES.index(n[:-4]) + 1) * 32 / 1024, 4) for n in names
    ]


def test_symlink_loop_in_a_folder_is_a_one_line_error(tmp_path: Path) -> None:
    mask = np.zeros((32, 32), np.uint8)
    for split in ("train", "val", "test"):
        write_pair(tmp_path / split, "0", mask)
    loop = tmp_path / "test" / "A" / "loop.png"
    loop.symlink_to(loop)
    dm = ChangeDataModule(root=str(tmp_path), batch_size=2, augment="none")
    with pytest.raises(DataError, match=r"loop\.png"):
        dm.setup("test")
