"""Writes that fail (full disk, unwritable folder) end in one line and keep earlier files."""

from __future__ import annotations

import errno
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from cdkd.files import WriteError, atomic_path, write_json_atomic
from cdkd.training.callbacks import AtomicCheckpointIO


def fill_disk(fh: Any, data: bytes) -> None:
    """Write a little, then fail as a full file system does."""
    fh.write(data[:10])
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_is_one_line_naming_the_file_folder_and_free_space(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    write_json_atomic(target, {"old": 1})
    with pytest.raises(WriteError) as err, atomic_path(target) as tmp, open(tmp, "wb") as fh:
        fill_disk(fh, b"x" * 100)
    message = str(err.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(f"{target}: cannot write (No space left on device); {tmp_path} has ")
    assert message.endswith(" MiB free")
    assert target.read_text().strip() == '{\n  "old": 1\n}'.strip()
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_folder_that_cannot_be_created_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(WriteError, match=r"file/out/x.json: cannot write \(Not a directory\)"):
        write_json_atomic(tmp_path / "file" / "out" / "x.json", {})


def test_other_errors_while_producing_the_content_pass_through(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bad content"), atomic_path(tmp_path / "a.png"):
        raise ValueError("bad content")
    unreadable = tmp_path / "input.tif"
    with pytest.raises(FileNotFoundError), atomic_path(tmp_path / "b.png"):
        unreadable.read_bytes()  # an input that cannot be read is not a write failure
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_write_that_fills_the_disk_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, path)
    real_save = torch.save

    def save_until_full(obj: Any, fh: Any, *args: Any, **kwargs: Any) -> None:
        real_save(obj, fh, *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save_until_full)
    with pytest.raises(WriteError, match=r"last.ckpt: cannot write \(No space left on device\)"):
        io.save_checkpoint({"step": 2, "w": torch.zeros(1000)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_saving_a_checkpoint_creates_no_file_outside_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    monkeypatch.setenv("TMPDIR", str(system_tmp))
    run_dir = tmp_path / "run"
    created: list[str] = []
    real_open = open

    def watch_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if any(c in mode for c in "wax+"):
            created.append(str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", watch_open)
    AtomicCheckpointIO().save_checkpoint({"w": torch.ones(4096)}, run_dir / "best.ckpt")
    monkeypatch.undo()
    assert list(system_tmp.iterdir()) == []
    assert created and all(Path(f).parent == run_dir for f in created)
    assert [p.name for p in run_dir.iterdir()] == ["best.ckpt"]
    assert torch.equal(torch.load(run_dir / "best.ckpt", weights_only=True)["w"], torch.ones(4096))


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, where the test may mount one (root with mount rights); else skip."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and mount rights)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_real_full_file_system(tiny_fs: Path) -> None:
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1, "w": torch.zeros(1000)}, tiny_fs / "best.ckpt")
    with pytest.raises(WriteError) as err:
        io.save_checkpoint({"step": 2, "w": torch.zeros(1_000_000)}, tiny_fs / "best.ckpt")
    assert "No space left on device" in str(err.value) and " MiB free" in str(err.value)
    assert torch.load(tiny_fs / "best.ckpt", weights_only=True)["step"] == 1
    assert [p.name for p in tiny_fs.iterdir()] == ["best.ckpt"]
