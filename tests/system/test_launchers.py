"""The launchers shipped for parallel and cluster runs (the ``launchers`` extra, part of dev):
a two-member multirun through joblib and through submitit's local executor, and the SLURM
launcher up to the scheduler (a stand-in ``sbatch`` that keeps the job file and refuses).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from cdkd.data.config import datamodule_from_config
from tests.factories import Composer, run_tool

STAGES = ("baseline", "teacher_s")


def sweep_args(tmp_path: Path, launcher: str, *extra: str) -> list[str]:
    return [
        "-m",
        "experiment=smoke",
        "model=fc_ef",
        "logger=none",
        f"stage={','.join(STAGES)}",
        f"paths.data_dir={tmp_path / 'data'}",
        f"paths.runs_dir={tmp_path / 'runs'}",
        f"hydra/launcher={launcher}",
        *extra,
    ]


def prepare_data(compose_config: Composer) -> None:
    """Write the smoke set once, so the members (running at once) only read it."""
    datamodule_from_config(compose_config("train", "experiment=smoke")).prepare_data()


def assert_members_finished(tmp_path: Path) -> Path:
    """Both stages trained, saved their checkpoints and were evaluated; the sweep folder."""
    model_dir = tmp_path / "runs" / "synthetic" / "fc_ef"
    for stage in STAGES:
        run_dir = model_dir / stage
        assert (run_dir / "best.ckpt").is_file() and (run_dir / "last.ckpt").is_file()
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["stage"] == stage and metrics["test"]["count"] == 12
    return model_dir / "multirun"


@pytest.mark.slow
def test_two_member_multirun_in_parallel_with_joblib(
    tmp_path: Path, compose_config: Composer
) -> None:
    prepare_data(compose_config)
    proc = run_tool(
        "cdkd.train", *sweep_args(tmp_path, "parallel", "hydra.launcher.n_jobs=2"), cwd=tmp_path
    )
    assert "Joblib.Parallel" in proc.stdout + proc.stderr
    sweep = assert_members_finished(tmp_path)
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]


@pytest.mark.slow
def test_two_member_multirun_through_the_submitit_local_executor(
    tmp_path: Path, compose_config: Composer
) -> None:
    prepare_data(compose_config)
    run_tool("cdkd.train", *sweep_args(tmp_path, "local"), cwd=tmp_path)
    sweep = assert_members_finished(tmp_path)
    results = sorted((sweep / ".submitit").rglob("*_result.pkl"))
    assert len(results) == 2  # each member ran as a submitit job of its own


def test_slurm_sweep_is_submitted_with_the_configured_resources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir, kept = tmp_path / "bin", tmp_path / "submitted.sh"
    bin_dir.mkdir()
    refusal = 'echo "sbatch: error: no scheduler here" >&2\nexit 1'
    for tool, body in (("sbatch", f'cp "$1" {kept}\n{refusal}'), ("srun", "exit 1")):
        (bin_dir / tool).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / tool).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    args = sweep_args(tmp_path, "slurm", "hydra.launcher.partition=gpu")
    proc = run_tool("cdkd.train", *args, cwd=tmp_path, code=None)
    assert proc.returncode != 0 and "no scheduler here" in proc.stderr
    script = kept.read_text()
    for line in (
        "#SBATCH --array=0-1",  # one array job for the two members
        "#SBATCH --partition=gpu",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=64GB",
        "#SBATCH --time=4320",
        "#SBATCH --signal=USR2@120",
    ):
        assert line in script
    assert "submitit.core._submit" in script
    folder = tmp_path / "runs" / "synthetic" / "fc_ef" / "multirun" / ".submitit"
    assert len(list(folder.glob("*.pkl"))) == 2  # the pickled members wait for the scheduler
    assert not (tmp_path / "runs" / "synthetic" / "fc_ef" / "baseline").exists()


def test_slurm_and_local_launchers_compose(compose_config: Composer) -> None:
    slurm = compose_config("train", "hydra/launcher=slurm", return_hydra_config=True)
    local = compose_config("train", "hydra/launcher=local", return_hydra_config=True)
    launcher = slurm.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.gpus_per_node == launcher.tasks_per_node == slurm.trainer.devices == 1
    assert launcher.timeout_min == 72 * 60 and launcher.mem_gb == 64
    assert local.hydra.launcher._target_.endswith("submitit_launcher.LocalLauncher")
    assert local.hydra.launcher.gpus_per_node == 1  # submitit's default (0) would hide the GPUs
