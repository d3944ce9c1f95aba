"""The pipeline's plan: stage order, run folders and the overrides each tool receives."""

from __future__ import annotations

from pathlib import Path

from cdkd.cli.pipeline import eval_overrides, plan
from cdkd.training.checkpoints import teacher_paths


def test_three_teacher_plan_order_and_folders(tmp_path: Path) -> None:
    overrides = ["model=fc_ef", f"paths.runs_dir={tmp_path}", "trainer.log_every_n_steps=3"]
    pipeline = plan(overrides)
    described = [(s.tool, s.overrides[-1]) for s in pipeline.steps]
    assert described == [
        ("cdkd.train", "stage=baseline"),
        ("cdkd.train", "stage=teacher_s"),
        ("cdkd.train", "stage=teacher_m"),
        ("cdkd.train", "stage=teacher_l"),
        ("cdkd.eval", "strategy=original"),
        ("cdkd.eval", "strategy=op"),
        ("cdkd.train", "stage=student"),
        ("cdkd.eval", "strategy=mtkd"),
    ]
    model_dir = tmp_path / "synthetic" / "fc_ef"
    outputs = [s.output for s in pipeline.steps]
    assert outputs[0] == model_dir / "baseline" / "metrics.json"
    assert outputs[6] == model_dir / "student" / "lambda_0.001" / "metrics.json"
    assert pipeline.metrics["op"] == model_dir / "eval" / "op" / "test" / "metrics.json"
    # Training-only overrides are not handed to the evaluations.
    eval_steps = [s for s in pipeline.steps if s.tool == "cdkd.eval"]
    assert all("trainer.log_every_n_steps=3" not in s.overrides for s in eval_steps)
    # The student finds its teachers exactly where the teacher stages write them.
    expected = teacher_paths(
        model_dir, {"small": "teacher_s", "medium": "teacher_m", "large": "teacher_l"}, ""
    )
    for bucket, step in zip(("small", "medium", "large"), pipeline.steps[1:4], strict=True):
        assert step.output.parent / "best.ckpt" == expected[bucket]


def test_two_teacher_plan_keeps_its_own_folders(tmp_path: Path) -> None:
    pipeline = plan(["model=fc_ef", "partition=two", f"paths.runs_dir={tmp_path}"])
    stages = [s.overrides[-1] for s in pipeline.steps if s.tool == "cdkd.train"]
    assert stages == ["stage=baseline", "stage=teacher_s", "stage=teacher_l", "stage=student"]
    folders = [s.output.parent.name for s in pipeline.steps if s.tool == "cdkd.train"]
    assert folders == ["baseline", "teacher_s-two", "teacher_l-two", "lambda_0.001"]
    assert pipeline.steps[-2].output.parent.parent.name == "student-two"
    assert pipeline.metrics["op"].parts[-3] == "op-two"


def test_eval_overrides_keep_shared_groups() -> None:
    kept = eval_overrides(["data=jl1cd", "model.optimizer.lr=1", "trainer=ddp", "seed=3"])
    assert kept == ["data=jl1cd", "model.optimizer.lr=1"]
