"""Real process kills: a run killed with SIGKILL and started again ends like an uninterrupted
run; SIGTERM saves ``last.ckpt``; a finished run started again only re-evaluates.

Checkpoints fall in the middle of epochs (12 training pairs, batch 4: three steps an epoch,
validation every 2 steps) and the runs train with the standard augmentation, so the resumed
run must continue the interrupted epoch with the same batches and the same augmentations.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.factories import Composer, run_tool, save_checkpoint, save_teachers

MAX_STEPS = 6
STEPS_PER_EPOCH = 3


def overrides(data_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        "experiment=smoke",
        "model=fc_ef",
        "logger=none",
        "trainer.deterministic=true",
        "test_after_fit=false",
        f"paths.data_dir={data_dir}",
        "data.root=${paths.data_dir}/resume",
        "data.synthetic.counts={train: 12, val: 4, test: 4}",
        "data.batch_size=4",
        f"schedule.max_steps={MAX_STEPS}",
        "schedule.val_every=2",
        "schedule.warmup_steps=1",
        f"run_dir={run_dir}",
        *extra,
    ]


def command(data_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cdkd.train", *overrides(data_dir, run_dir, *extra)]


@pytest.fixture
def train_here(compose_config: Composer) -> Callable[..., None]:
    """``train_here(data_dir, run_dir, *extra)``: the same run in this process (saves a Python
    start-up)."""
    from cdkd.training.run import train

    def run(data_dir: Path, run_dir: Path, *extra: str) -> None:
        train(compose_config("train", *overrides(data_dir, run_dir, *extra)))

    return run


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{path} never appeared (exit {proc.returncode})")
        time.sleep(0.01)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def kill_and_resume(
    tmp_path: Path, train_here: Callable[..., None], *extra: str, ddp: bool = False
) -> tuple[dict, dict]:
    """Train uninterrupted; train again, SIGKILL mid-epoch, re-run the command: both ends.

    The uninterrupted run trains in this process, except under DDP, whose launcher starts
    the other process by running this process's command line again.
    """
    data = tmp_path / "data"
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    if ddp:
        run_tool("cdkd.train", *overrides(data, reference, *extra), cwd=tmp_path)
    else:
        train_here(data, reference, *extra)

    proc = subprocess.Popen(
        command(data, resumed, *extra),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: DDP workers die with it
    )
    wait_for(resumed / "last.ckpt", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    killed_at = load(resumed / "last.ckpt")["global_step"]
    assert 0 < killed_at < MAX_STEPS, "the run finished before it could be killed"
    assert killed_at % STEPS_PER_EPOCH != 0, "the kill should fall in the middle of an epoch"

    run_tool("cdkd.train", *overrides(data, resumed, *extra), cwd=tmp_path)  # resume=auto
    expected, got = load(reference / "last.ckpt"), load(resumed / "last.ckpt")
    assert got["global_step"] == expected["global_step"] == MAX_STEPS
    assert got["state_dict"].keys() == expected["state_dict"].keys()
    for key, value in expected["state_dict"].items():
        torch.testing.assert_close(got["state_dict"][key], value, rtol=1e-5, atol=1e-6)
    return expected, got


def test_killed_run_resumes_to_the_same_weights(
    tmp_path: Path, train_here: Callable[..., None]
) -> None:
    expected, got = kill_and_resume(tmp_path, train_here)
    resumed = tmp_path / "resumed"
    data = tmp_path / "data"
    best = "best_model_score"
    (cb_expected,) = [v for k, v in expected["callbacks"].items() if "val/mIoU" in k]
    (cb_got,) = [v for k, v in got["callbacks"].items() if "val/mIoU" in k]
    torch.testing.assert_close(cb_got[best], cb_expected[best])

    provenance = json.loads((resumed / "provenance.json").read_text())
    assert provenance["resumed_from"] == str(resumed / "last.ckpt")
    assert [p["resumed_from"] for p in provenance["previous"]] == [None]
    assert set(provenance["car_index_sha256"]) == {"train", "val", "test"}
    assert provenance["versions"]["lightning"] and "git" in provenance

    # A finished run started again trains no further and evaluates its best checkpoint.
    train_here(data, resumed, "test_after_fit=true")
    again = load(resumed / "last.ckpt")
    assert again["global_step"] == MAX_STEPS
    torch.testing.assert_close(again["state_dict"], got["state_dict"])
    metrics = json.loads((resumed / "metrics.json").read_text())
    assert metrics["checkpoint"] == str(resumed / "best.ckpt") and metrics["test"]["count"] == 4
    # Once evaluated, a further start (a re-launched pipeline or sweep) skips it entirely.
    stamp = (resumed / "metrics.json").stat().st_mtime_ns
    train_here(data, resumed, "test_after_fit=true")
    assert (resumed / "metrics.json").stat().st_mtime_ns == stamp


def test_sigterm_saves_last_checkpoint(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cmd = command(
        tmp_path / "data",
        run_dir,
        "schedule.max_steps=100000",
        "callbacks.last_checkpoint=null",  # any last.ckpt comes from SIGTERM
    )
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    wait_for(run_dir / "best.ckpt", proc)  # training is under way
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1
    step = load(run_dir / "last.ckpt")["global_step"]
    assert step >= 2
    assert f"stopped by SIGTERM at step {step}; last.ckpt holds that state" in stderr


@pytest.mark.slow  # ~30 s; the baseline case above covers the kill-and-resume path by default
def test_killed_student_resumes_to_the_same_weights(
    tmp_path: Path, train_here: Callable[..., None]
) -> None:
    origin = save_checkpoint(tmp_path / "origin.ckpt", "fc_ef")
    teachers = ", ".join(f"{b}: '{p}'" for b, p in save_teachers(tmp_path, "fc_ef").items())
    kill_and_resume(
        tmp_path,
        train_here,
        "stage=student",
        f"schedule.distill_max_steps={MAX_STEPS}",
        f"distill.init={origin}",
        f"distill.teachers={{{teachers}}}",
        "distill.lambda=1.0",
    )


@pytest.mark.slow  # ~60 s; the single-process resume test covers the default suite
def test_killed_ddp_run_resumes_to_the_same_weights(
    tmp_path: Path, train_here: Callable[..., None]
) -> None:
    # Two processes on CPU, 12 pairs each in batches of 4 (global 8): still three steps an epoch.
    kill_and_resume(
        tmp_path,
        train_here,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "data.synthetic.counts={train: 24, val: 4, test: 4}",
        "data.batch_size=8",
        ddp=True,
    )
