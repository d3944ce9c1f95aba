"""The pipeline's plan: stage order, run folders and the overrides each tool receives."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cdkd.cli.pipeline import eval_overrides, plan
from cdkd.errors import ConfigError
from cdkd.runs.layout import RunLayout


def test_three_teacher_plan_order_and_folders(tmp_path: Path) -> None:
    overrides = ["model=fc_ef", f"paths.runs_dir={tmp_path}", "trainer.log_every_n_steps=3"]
    overrides.append("distill.lambdas=[1e-2,1e-3]")
    pipeline = plan(overrides)
    described = [
        (s.tool, tuple(o for o in s.overrides if o not in overrides)) for s in pipeline.steps
    ]
    assert described == [
        ("cdkd.train", ("stage=baseline",)),
        ("cdkd.train", ("stage=teacher_s",)),
        ("cdkd.train", ("stage=teacher_m",)),
        ("cdkd.train", ("stage=teacher_l",)),
        ("cdkd.eval", ("strategy=original",)),
        ("cdkd.eval", ("strategy=op",)),
        # One student per lambda, in increasing order, never scored on test.
        ("cdkd.train", ("stage=student", "distill.lambda=0.001", "test_after_fit=false")),
        ("cdkd.train", ("stage=student", "distill.lambda=0.01", "test_after_fit=false")),
    ]
    # Every step gets the user's overrides (the grid too) ahead of its own.
    assert all(s.overrides[: len(overrides)] == tuple(overrides) for s in pipeline.steps[:4])
    model_dir = tmp_path / "synthetic" / "fc_ef"
    outputs = [s.output for s in pipeline.steps]
    assert outputs[0] == model_dir / "baseline" / "metrics.json"
    assert outputs[6] == model_dir / "student" / "lambda_0.001" / "metrics.json"
    assert pipeline.students == {
        0.001: model_dir / "student" / "lambda_0.001",
        0.01: model_dir / "student" / "lambda_0.01",
    }
    assert pipeline.selection == model_dir / "student" / "selection.json"
    assert pipeline.baseline == model_dir / "baseline"
    # The MTKD evaluation comes after the selection and names no lambda: it reads the choice.
    assert pipeline.mtkd.tool == "cdkd.eval" and pipeline.mtkd.overrides[-1] == "strategy=mtkd"
    assert not any("distill.lambda=" in item for item in pipeline.mtkd.overrides)
    assert pipeline.metrics["op"] == model_dir / "eval" / "op" / "test" / "metrics.json"
    assert pipeline.metrics["mtkd"] == pipeline.mtkd.output
    # Training-only overrides are not handed to the evaluations.
    eval_steps = [s for s in [*pipeline.steps, pipeline.mtkd] if s.tool == "cdkd.eval"]
    assert all("trainer.log_every_n_steps=3" not in s.overrides for s in eval_steps)
    # The student finds its teachers exactly where the teacher stages write them.
    expected = RunLayout(model_dir).teacher_checkpoints(
        {"small": "teacher_s", "medium": "teacher_m", "large": "teacher_l"}
    )
    for bucket, step in zip(("small", "medium", "large"), pipeline.steps[1:4], strict=True):
        assert step.output.parent / "best.ckpt" == expected[bucket]


def test_default_grid_is_the_papers(tmp_path: Path) -> None:
    pipeline = plan(["model=fc_ef", f"paths.runs_dir={tmp_path}"])
    assert list(pipeline.students) == [1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2]
    students = [s for s in pipeline.steps if "stage=student" in s.overrides]
    assert [s.output.parent.name for s in students][:2] == ["lambda_1e-05", "lambda_5e-05"]


def test_two_teacher_plan_keeps_its_own_folders(tmp_path: Path) -> None:
    pipeline = plan(
        ["model=fc_ef", "partition=two", f"paths.runs_dir={tmp_path}", "distill.lambdas=[1e-3]"]
    )
    stages = [s.overrides[4] for s in pipeline.steps if s.tool == "cdkd.train"]
    assert stages == ["stage=baseline", "stage=teacher_s", "stage=teacher_l", "stage=student"]
    folders = [s.output.parent.name for s in pipeline.steps if s.tool == "cdkd.train"]
    assert folders == ["baseline", "teacher_s-two", "teacher_l-two", "lambda_0.001"]
    assert pipeline.steps[-1].output.parent.parent.name == "student-two"
    assert pipeline.selection.parent.name == "student-two"
    assert pipeline.metrics["op"].parts[-3] == "op-two"
    assert pipeline.mtkd.output.parts[-3] == "mtkd-two"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("distill.lambda=0.1", "give distill.lambdas=[VALUE] for a single lambda"),
        ("distill.lambdas=[]", "must be a non-empty list"),
        ("distill.lambdas=0.1", "must be a non-empty list"),
        ("distill.lambdas=[1e-3,0.001]", "values must be distinct and >= 0"),
        ("distill.lambdas=[-1]", "values must be distinct and >= 0"),
        ("distill.lambdas=[a]", "not all numbers"),
    ],
)
def test_bad_lambda_grids_are_one_line(tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        plan(["model=fc_ef", f"paths.runs_dir={tmp_path}", override])


def test_eval_overrides_keep_shared_groups() -> None:
    kept = eval_overrides(["data=jl1cd", "model.optimizer.lr=1", "trainer=ddp", "seed=3"])
    assert kept == ["data=jl1cd", "model.optimizer.lr=1"]
