"""RunLayout: every run folder and output path, in Python and through the config resolver."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdkd.errors import ConfigError
from cdkd.runs.layout import RunFolder, RunLayout, model_results, results_across_models
from tests.factories import Composer

RUNS_V1 = Path(__file__).parents[1] / "fixtures" / "runs_v1"
STAGES = {"small": "teacher_s", "medium": "teacher_m", "large": "teacher_l"}


def test_folders_of_each_stage_and_partition(tmp_path: Path) -> None:
    three = RunLayout.of(tmp_path, "jl1cd", "changer_b1")
    two = RunLayout.of(tmp_path, "jl1cd", "changer_b1", "-two")
    model = tmp_path / "jl1cd" / "changer_b1"
    assert three.stage_dir("baseline") == two.stage_dir("baseline") == model / "baseline"
    assert two.stage_dir("teacher_s") == model / "teacher_s-two"
    assert three.stage_dir("student", 1e-05) == model / "student" / "lambda_1e-05"
    assert two.selection == model / "student-two" / "selection.json"
    assert two.eval_dir("op", "val") == model / "eval" / "op-two" / "val"
    assert two.results == model / "results-two" and two.analysis_dir == model / "analysis-two"
    assert results_across_models(three.dataset_dir, "-two") == tmp_path / "jl1cd" / "results-two"
    run = three.stage("teacher_m")
    assert run.best == model / "teacher_m" / "best.ckpt" and run.last.name == "last.ckpt"
    assert run.eval_dir("test") == model / "teacher_m" / "eval" / "test"


def test_run_folders_written_before_are_found() -> None:
    layout = RunLayout.of(RUNS_V1, "synthetic", "tinycd")
    teachers = layout.teacher_checkpoints(STAGES)
    assert all(path.is_file() for path in teachers.values())
    assert layout.stage("baseline").best.is_file()
    assert layout.stage("student", 0.005).best.is_file()


def test_explicit_teachers_win_and_unknown_buckets_are_refused(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path)
    chosen = layout.teacher_checkpoints(STAGES, {"small": "/t/s.ckpt"})
    assert (
        chosen["small"] == Path("/t/s.ckpt") and chosen["large"] == layout.stage("teacher_l").best
    )
    with pytest.raises(ConfigError, match=r"unknown bucket\(s\) \['tiny'\]"):
        layout.teacher_checkpoints(STAGES, {"tiny": "x.ckpt"})


def test_results_of_every_model(tmp_path: Path) -> None:
    for model in ("a", "b"):
        RunLayout.of(tmp_path, "d", model).results.parent.mkdir(parents=True)
        RunLayout.of(tmp_path, "d", model).results.with_suffix(".json").write_text("{}")
    assert sorted(p.parent.name for p in model_results(tmp_path / "d")) == ["a", "b"]
    assert model_results(tmp_path / "d", "-two") == []


def test_configs_take_their_paths_from_the_layout(tmp_path: Path, compose_config: Composer) -> None:
    runs = f"paths.runs_dir={tmp_path}"
    layout = RunLayout.of(tmp_path, "synthetic", "tinycd", "-two")
    student = compose_config("train", runs, "stage=student", "partition=two", "distill.lambda=0.01")
    teacher = compose_config(
        "train", runs, "stage=teacher_l", "partition=two", return_hydra_config=True
    )
    moved = compose_config("train", runs, "run_dir=/elsewhere")
    evaluation = compose_config("eval", runs, "partition=two", "strategy=op", "split=val")
    other = compose_config("eval", runs, "distill.teacher_model=fc_ef", "out_dir=/out")
    analyze = compose_config("analyze", runs, "partition=two")
    assert Path(student.run_dir) == layout.stage_dir("student", 0.01)
    assert Path(student.distill.init) == layout.stage("baseline").best
    assert Path(teacher.run_dir) == layout.stage_dir("teacher_l")
    assert Path(teacher.hydra.sweep.dir) == layout.multirun_dir
    assert Path(teacher.callbacks.model_checkpoint.dirpath) == Path(teacher.run_dir)
    assert teacher.callbacks.model_checkpoint.filename == RunFolder(Path()).best.stem
    assert moved.run_dir == moved.callbacks.last_checkpoint.dirpath == "/elsewhere"
    assert Path(evaluation.out_dir) == layout.eval_dir("op", "val")
    assert Path(evaluation.selection) == layout.selection
    assert Path(other.distill.teacher_dir) == tmp_path / "synthetic" / "fc_ef"
    assert other.out_dir == "/out"
    assert Path(analyze.out_dir) == layout.analysis_dir
    assert Path(analyze.results_dir) == layout.dataset_dir
