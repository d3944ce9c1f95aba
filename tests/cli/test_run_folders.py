"""Run folders through the entry points: a locked folder stops a second writer with one line,
and a full disk ends a run, an evaluation, a prediction or an export with one line naming the
file, its folder and the free space, leaving the earlier files intact.

The Hydra task functions run in this process (``main.__wrapped__``: the task as the one-line
error wrapper reports it); the two-process case is tests/system/test_concurrent_runs.py.
"""

from __future__ import annotations

import errno
import importlib
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from omegaconf import DictConfig
from PIL import Image
from rasterio.transform import Affine

from cdkd.cli import pipeline, report
from cdkd.errors import CdkdError
from cdkd.files import WriteError
from cdkd.runs.lock import LOCK_NAME, RunLockError
from tests.factories import Composer, make_dataset, save_checkpoint

MODEL = "fc_ef"
# 4 training pairs of 32 px, batch 2: two optimizer steps, a checkpoint after each.
TINY = (
    "data=folder",
    "data.num_workers=0",
    "data.batch_size=2",
    "data.augment=none",
    f"model={MODEL}",
    "logger=none",
    "callbacks.progress_bar=null",
    "trainer.enable_model_summary=false",
    "schedule.max_steps=2",
    "schedule.val_every=1",
    "schedule.warmup_steps=0",
    "test_after_fit=false",
)
NO_SPACE = "No space left on device"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in ``tmp_path``, with one-line errors (no debug mode)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CDKD_DEBUG", raising=False)


@pytest.fixture
def fails_with_one_line(
    capsys: pytest.CaptureFixture[str], compose_config: Composer
) -> Callable[..., str]:
    """Run ``cdkd.<tool> OVERRIDES``; it must exit with status 1 after one ``error:`` line."""

    def run(tool: str, *overrides: str) -> str:
        cfg = compose_config(tool, *overrides)
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            task(tool)(cfg)
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 1, err
        assert len(err.splitlines()) == 1, err
        assert err.startswith("error: "), err
        return err

    return run


def task(tool: str) -> Callable[[DictConfig], Any]:
    """The body of ``python -m cdkd.<tool>`` after Hydra."""
    return importlib.import_module(f"cdkd.cli.{tool}").main.__wrapped__


def held_by_another_process(folder: Path) -> int:
    """Leave ``folder`` locked by a live process of this host (our parent); its PID."""
    folder.mkdir(parents=True, exist_ok=True)
    holder = {
        "host": socket.gethostname(),
        "pid": os.getppid(),
        "started": "2026-01-01T00:00:00+00:00",
        "command": "cdkd.train experiment=smoke",
        "token": "the-other-run",
    }
    (folder / LOCK_NAME).write_text(json.dumps(holder))
    return os.getppid()


def assert_names_the_holder(err: str, folder: Path, pid: int) -> None:
    assert err.startswith(f"error: {folder.absolute()}: in use by PID {pid} on "), err
    assert socket.gethostname() in err and str(folder / LOCK_NAME) in err


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "ds", {"train": 4, "val": 2, "test": 2})


def test_the_lock_error_is_a_cdkd_error() -> None:
    assert issubclass(RunLockError, CdkdError)


def test_training_into_a_locked_folder_stops_before_writing(
    tmp_path: Path, dataset: Path, fails_with_one_line: Callable[..., str]
) -> None:
    run_dir = tmp_path / "run"
    pid = held_by_another_process(run_dir)
    err = fails_with_one_line("train", *TINY, f"data.root={dataset}", f"run_dir={run_dir}")
    assert_names_the_holder(err, run_dir, pid)
    assert [p.name for p in run_dir.iterdir()] == [LOCK_NAME]  # not even config.yaml
    assert json.loads((run_dir / LOCK_NAME).read_text())["token"] == "the-other-run"


def test_evaluating_into_a_locked_folder_stops_before_reading_the_checkpoint(
    tmp_path: Path, dataset: Path, fails_with_one_line: Callable[..., str]
) -> None:
    out_dir = tmp_path / "eval"
    pid = held_by_another_process(out_dir)
    missing = tmp_path / "not-there.ckpt"  # would be the error if the lock came later
    overrides = ["data=folder", f"data.root={dataset}", f"model={MODEL}", "device=cpu"]
    err = fails_with_one_line("eval", *overrides, f"checkpoint={missing}", f"out_dir={out_dir}")
    assert_names_the_holder(err, out_dir, pid)
    assert [p.name for p in out_dir.iterdir()] == [LOCK_NAME]


def test_analysing_into_a_locked_folder_stops(
    tmp_path: Path, fails_with_one_line: Callable[..., str]
) -> None:
    out_dir = tmp_path / "analysis"
    pid = held_by_another_process(out_dir)
    err = fails_with_one_line("analyze", f"paths.runs_dir={tmp_path}", f"out_dir={out_dir}")
    assert_names_the_holder(err, out_dir, pid)


def test_a_second_pipeline_on_the_same_model_stops_before_its_first_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    args = [f"paths.runs_dir={tmp_path / 'runs'}", f"paths.data_dir={tmp_path / 'data'}"]
    student_root = tmp_path / "runs" / "synthetic" / "tinycd" / "student"
    pid = held_by_another_process(student_root)
    started: list[Any] = []
    monkeypatch.setattr(pipeline, "run_step", lambda *a, **k: started.append(a))
    with pytest.raises(SystemExit) as exit_info:
        pipeline.main(args)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 1 and len(err.splitlines()) == 1
    assert_names_the_holder(err, student_root, pid)
    assert started == []


def test_a_report_into_a_locked_students_folder_stops_without_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    student_root = tmp_path / "runs" / "synthetic" / "tinycd" / "student"
    run = student_root / "lambda_0.001"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("seed: 42\ndistill:\n  lambda: 0.001\n")
    pid = held_by_another_process(student_root)  # a pipeline of this model is running
    with pytest.raises(SystemExit) as exit_info:
        report.main([f"paths.runs_dir={tmp_path / 'runs'}"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 1 and len(err.splitlines()) == 1
    assert_names_the_holder(err, student_root, pid)
    assert sorted(p.name for p in student_root.iterdir()) == [LOCK_NAME, "lambda_0.001"]


def test_the_pipeline_refuses_a_seed_it_would_not_chain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        pipeline.main([f"paths.runs_dir={tmp_path}", "seed=1"])
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: seed: the pipeline chains the runs of the default seed"), err


def test_a_full_disk_at_a_later_checkpoint_is_one_line_and_keeps_the_earlier_ones(
    tmp_path: Path,
    dataset: Path,
    fails_with_one_line: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_dir = tmp_path / "run"
    real_save, saved = torch.save, []

    def save_until_full(obj: Any, fh: Any, *args: Any, **kwargs: Any) -> None:
        if len(saved) == 2:  # best and last of step 1 fit; the disk is full at step 2
            fh.write(b"partial")
            raise OSError(errno.ENOSPC, NO_SPACE)
        saved.append(obj["global_step"])
        real_save(obj, fh, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_full)
    err = fails_with_one_line("train", *TINY, f"data.root={dataset}", f"run_dir={run_dir}")
    monkeypatch.undo()
    assert saved == [1, 1]
    assert err.startswith(f"error: {run_dir}/") and f".ckpt: cannot write ({NO_SPACE}); " in err
    assert f"); {run_dir} has " in err and err.endswith(" MiB free"), err
    for name in ("best.ckpt", "last.ckpt"):
        assert torch.load(run_dir / name, map_location="cpu", weights_only=True)["global_step"] == 1
    assert not (run_dir / "metrics.json").exists()
    assert sorted(run_dir.glob("*.tmp")) == [] and not (run_dir / LOCK_NAME).exists()


@pytest.fixture
def full_disk_for(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """``full_disk_for(NAME)``: syncing the file written as NAME fails as a full disk does.

    The failure comes from ``os.fsync`` of the temporary file beside NAME, where a full disk
    or quota shows up for data the page cache had accepted (files written by C libraries,
    e.g. GDAL's GeoTIFF, never pass Python's own write calls).
    """

    def arm(name: str) -> None:
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            if Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(f".{name}."):
                raise OSError(errno.ENOSPC, NO_SPACE)
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd to name a file descriptor's file")
    return arm


def assert_full_disk_line(err: str, path: Path) -> None:
    assert err.startswith(f"error: {path}: cannot write ({NO_SPACE}); {path.parent} has "), err
    assert err.endswith(" MiB free"), err


def test_a_full_disk_at_an_evaluations_metrics_keeps_the_earlier_file(
    tmp_path: Path,
    dataset: Path,
    fails_with_one_line: Callable[..., str],
    full_disk_for: Callable[[str], None],
) -> None:
    ckpt = save_checkpoint(tmp_path / "m.ckpt", MODEL)
    out_dir = tmp_path / "eval"
    out_dir.mkdir()
    (out_dir / "metrics.json").write_text('{"earlier": true}')
    full_disk_for("metrics.json")
    overrides = ["data=folder", f"data.root={dataset}", f"model={MODEL}", "device=cpu"]
    err = fails_with_one_line("eval", *overrides, f"checkpoint={ckpt}", f"out_dir={out_dir}")
    assert_full_disk_line(err, out_dir / "metrics.json")
    assert json.loads((out_dir / "metrics.json").read_text()) == {"earlier": True}
    assert sorted(p.name for p in out_dir.iterdir()) == ["metrics.json"]


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_a_full_disk_at_a_change_map_is_one_line(
    tmp_path: Path,
    fails_with_one_line: Callable[..., str],
    full_disk_for: Callable[[str], None],
    suffix: str,
) -> None:
    ckpt = save_checkpoint(tmp_path / "m.ckpt", "fc_siam_diff")
    rng = np.random.default_rng(0)
    pair = []
    for date in ("t1", "t2"):  # a GeoTIFF pair maps to a GeoTIFF, an image pair to a PNG
        pair.append(tmp_path / f"{date}{suffix}")
        pixels = rng.integers(0, 256, (3, 32, 32), dtype=np.uint8)
        if suffix == ".tif":
            profile = {"driver": "GTiff", "width": 32, "height": 32, "count": 3, "dtype": "uint8"}
            geo = {"crs": "EPSG:32633", "transform": Affine(10, 0, 5e5, 0, -10, 5.6e6)}
            with rasterio.open(pair[-1], "w", **profile, **geo) as dst:
                dst.write(pixels)
        else:
            Image.fromarray(pixels.transpose(1, 2, 0)).save(pair[-1])
    out = tmp_path / "maps" / f"change{suffix}"
    full_disk_for(out.name)
    err = fails_with_one_line(
        "predict",
        "model=fc_siam_diff",
        f"weights={ckpt}",
        f"image1={pair[0]}",
        f"image2={pair[1]}",
        f"output={out}",
        "device=cpu",
    )
    assert_full_disk_line(err, out)
    assert list(out.parent.iterdir()) == []


@pytest.mark.slow  # ~20 s of ONNX export; the other writers cover the default suite
def test_a_full_disk_at_an_onnx_export_is_one_line(
    tmp_path: Path, fails_with_one_line: Callable[..., str], full_disk_for: Callable[[str], None]
) -> None:
    ckpt = save_checkpoint(tmp_path / "m.ckpt", "fc_siam_diff")
    out = tmp_path / "onnx" / "m.onnx"
    full_disk_for(out.name)
    err = fails_with_one_line("export", f"ckpt={ckpt}", f"out={out}", "size=32", "verify=false")
    assert_full_disk_line(err, out)
    assert list(out.parent.iterdir()) == []


def test_write_errors_go_through_the_one_line_wrapper() -> None:
    assert issubclass(WriteError, CdkdError)
