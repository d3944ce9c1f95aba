"""RunLayout: every run folder and output path, in Python and through the config resolver."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdkd.errors import ConfigError
from cdkd.runs.layout import (
    DEFAULT_SEED,
    RunFolder,
    RunLayout,
    distill_variant,
    model_results,
    results_across_models,
    seeded,
)
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


def sweep_members(compose_config: Composer, *overrides: str) -> list[str]:
    """The run folder of each member of ``-m OVERRIDES`` (comma lists expand as Hydra's basic
    sweeper does, plus the sweep of ``hparams_search`` when one is chosen)."""
    swept = [item for item in overrides if "," in item.split("=", 1)[1]]
    fixed = [item for item in overrides if item not in swept]
    hydra = compose_config("train", *fixed, return_hydra_config=True).hydra
    axes = [
        [f"{k}={v}" for v in values.split(",")]
        for k, values in (hydra.sweeper.params or {}).items()
    ]
    axes += [[f"{k}={v}" for v in vs.split(",")] for k, vs in (i.split("=", 1) for i in swept)]
    members: list[list[str]] = [[]]
    for axis in axes:
        members = [[*member, value] for member in members for value in axis]
    return [compose_config("train", *fixed, *member).run_dir for member in members]


def test_members_of_a_lambda_sweep_never_share_a_folder(compose_config: Composer) -> None:
    folders = sweep_members(compose_config, "hparams_search=lambda_grid")
    assert len(folders) == 7 and len(set(folders)) == 7
    assert {Path(f).parent.name for f in folders} == {"student"}


def test_members_of_a_seed_sweep_never_share_a_folder(
    tmp_path: Path, compose_config: Composer
) -> None:
    folders = sweep_members(compose_config, "stage=baseline,teacher_s", "seed=42,1,2")
    model = tmp_path / "runs" / "synthetic" / "tinycd"
    assert sorted(Path(f).relative_to(model).as_posix() for f in folders) == [
        "baseline",  # the default seed keeps the folder runs were always written to
        "baseline-seed1",
        "baseline-seed2",
        "teacher_s",
        "teacher_s-seed1",
        "teacher_s-seed2",
    ]
    student = compose_config("train", "stage=student", "distill.lambda=0.01", "seed=3")
    assert Path(student.run_dir) == model / "student" / "lambda_0.01-seed3"
    assert Path(student.distill.init) == model / "baseline" / "best.ckpt"  # seed 42's M_O


def test_a_sweep_over_another_key_shares_the_folder_unless_run_dir_names_it(
    compose_config: Composer,
) -> None:
    """The layout does not know every key: members of such a sweep share one folder (the
    lock stops the second while the first runs), unless run_dir names the key."""
    assert len(set(sweep_members(compose_config, "model.optimizer.lr=1e-3,2e-3"))) == 1
    named = "run_dir=${layout:run_dir}-lr${model.optimizer.lr}"
    folders = sweep_members(compose_config, "model.optimizer.lr=1e-3,2e-3", named)
    assert [Path(f).name for f in folders] == ["baseline-lr0.001", "baseline-lr0.002"]


def test_the_default_seed_of_the_layout_is_the_training_configs(compose_config: Composer) -> None:
    assert compose_config("train").seed == DEFAULT_SEED
    assert seeded(Path("/r/baseline"), DEFAULT_SEED) == Path("/r/baseline")
    assert seeded(Path("/r/baseline"), 7) == Path("/r/baseline-seed7")


def test_each_distillation_recipe_has_its_own_student_folders(
    tmp_path: Path, compose_config: Composer
) -> None:
    """Recipes other than the paper's (loss, routing, teachers' architecture) get their own
    students, student evaluations, results and analysis; the baseline, the teachers and the
    evaluations of the original model and of O-P stay shared."""
    runs = f"paths.runs_dir={tmp_path}"
    model = tmp_path / "synthetic" / "tinycd"
    recipes = {
        (): "",
        ("distill.loss=mse", "distill.routing=car"): "",
        ("distill.loss=cwd",): "-cwd",
        ("distill.loss=cwd", "distill.routing=soft"): "-cwd-soft",
        ("distill.routing=single", "distill.single_teacher=init"): "-single-self",
        ("distill.teacher_model=changer_b0",): "-from-changer_b0",
    }
    for recipe, variant in recipes.items():
        student = compose_config("train", runs, "stage=student", "distill.lambda=0.01", *recipe)
        teacher = compose_config("train", runs, "stage=teacher_s", *recipe)
        mtkd = compose_config("eval", runs, "strategy=mtkd", *recipe)
        op = compose_config("eval", runs, "strategy=op", *recipe)
        analyze = compose_config("analyze", runs, *recipe)
        assert Path(student.run_dir) == model / f"student{variant}" / "lambda_0.01"
        assert Path(mtkd.selection) == model / f"student{variant}" / "selection.json"
        assert Path(mtkd.out_dir) == model / "eval" / f"mtkd{variant}" / "test"
        assert Path(analyze.out_dir) == model / f"analysis{variant}"
        assert Path(teacher.run_dir) == model / "teacher_s"
        assert Path(op.out_dir) == model / "eval" / "op" / "test"
        assert Path(student.distill.init) == model / "baseline" / "best.ckpt"
    cross = compose_config("train", runs, "stage=student", "distill.teacher_model=changer_b0")
    assert Path(cross.distill.teacher_dir) == tmp_path / "synthetic" / "changer_b0"
    assert distill_variant({"loss": "kl", "routing": "ensemble"}, "tinycd") == "-kl-ensemble"
    assert distill_variant(None, "tinycd") == ""
