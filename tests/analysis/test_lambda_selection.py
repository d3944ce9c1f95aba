"""Lambda chosen on validation: the selection rule, its record, and the tools that read it."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from cdkd.analysis.sweep import (
    select_lambda,
    selected_lambda,
    selection_markdown,
)
from cdkd.cli import report
from cdkd.cli.eval import main as eval_main
from cdkd.cli.pipeline import evaluated_other_student
from cdkd.errors import ConfigError, DataError
from tests.factories import Composer, save_checkpoint


def finished_run(
    run_dir: Path,
    lam: float,
    val_miou: float,
    test_miou: float | None = None,
    seed: int | None = None,
) -> Path:
    """A student run folder as training leaves it: config.yaml and metrics.json."""
    run_dir.mkdir(parents=True)
    seed_line = "" if seed is None else f"seed: {seed}\n"
    (run_dir / "config.yaml").write_text(f"{seed_line}distill:\n  lambda: {lam!r}\n")
    per_image = {"mIoU": val_miou, "mAcc": 0.9, "mPrecision": 0.8, "mFscore": 0.7}
    metrics = {"checkpoint": str(run_dir / "best.ckpt"), "val": {"per_image": per_image}}
    if test_miou is not None:
        metrics["test"] = {"per_image": {**per_image, "mIoU": test_miou}}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    return run_dir


def test_the_best_validation_miou_wins_and_test_is_never_read(tmp_path: Path) -> None:
    runs = {
        1e-3: finished_run(tmp_path / "lambda_0.001", 1e-3, 0.60, test_miou=0.99),
        1e-2: finished_run(tmp_path / "lambda_0.01", 1e-2, 0.70, test_miou=0.10),
        1e-4: finished_run(tmp_path / "lambda_0.0001", 1e-4, 0.65),
    }
    selection = select_lambda(runs)
    assert selection["selected"] == {"lambda": 1e-2, "run": str(tmp_path / "lambda_0.01")}
    assert selection["grid"] == [1e-4, 1e-3, 1e-2]
    assert [r["val"]["mIoU"] for r in selection["runs"]] == [0.65, 0.60, 0.70]
    markdown = selection_markdown(selection, {"mIoU": 0.5}, "validation")
    assert "| M_O | - | 50.00 |" in markdown
    assert "| M_S | 0.01 | 70.00 | 90.00 | 80.00 | 70.00 | * |" in markdown
    assert "| M_S | 0.001 | 60.00 | 90.00 | 80.00 | 70.00 |  |" in markdown


def test_a_tie_goes_to_the_smaller_lambda(tmp_path: Path) -> None:
    runs = {lam: finished_run(tmp_path / f"lambda_{lam!r}", lam, 0.5) for lam in (1e-2, 1e-5, 1e-3)}
    selection = select_lambda(runs)
    assert selection["selected"]["lambda"] == 1e-5
    assert "smaller lambda" in selection["rule"]


def test_an_unfinished_or_unreadable_student_is_one_line(tmp_path: Path) -> None:
    done = finished_run(tmp_path / "lambda_0.001", 1e-3, 0.5)
    missing = tmp_path / "lambda_0.01"
    with pytest.raises(DataError, match=r"lambda_0\.01/metrics\.json: not found"):
        select_lambda({1e-3: done, 1e-2: missing})
    missing.mkdir()
    (missing / "metrics.json").write_text('{"test": {}}')
    with pytest.raises(DataError, match="no validation per-image metrics"):
        select_lambda({1e-3: done, 1e-2: missing})
    with pytest.raises(ConfigError, match=re.escape("distill.lambdas is empty")):
        select_lambda({})


def test_selected_lambda_reads_the_record_or_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "selection.json"
    with pytest.raises(
        ConfigError, match=re.escape("no lambda selection; run `python -m cdkd.pipeline`")
    ):
        selected_lambda(path)
    path.write_text("{}")
    with pytest.raises(DataError, match="not a lambda selection"):
        selected_lambda(path)
    path.write_text(json.dumps(select_lambda({5e-4: finished_run(tmp_path / "r", 5e-4, 0.4)})))
    assert selected_lambda(path) == 5e-4


def test_an_evaluation_of_another_student_is_stale(tmp_path: Path) -> None:
    chosen = finished_run(tmp_path / "lambda_0.01", 1e-2, 0.7)
    selection = select_lambda({1e-2: chosen})
    metrics = tmp_path / "metrics.json"
    assert not evaluated_other_student(metrics, selection)  # nothing yet: simply run
    metrics.write_text(json.dumps({"checkpoint": str(tmp_path / "lambda_0.001" / "best.ckpt")}))
    assert evaluated_other_student(metrics, selection)
    metrics.write_text(json.dumps({"checkpoint": str(chosen / "best.ckpt")}))
    assert not evaluated_other_student(metrics, selection)


def test_eval_mtkd_takes_the_selected_student_unless_lambda_is_given(
    tmp_path: Path,
    dataset_factory: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    compose_config: Composer,
) -> None:
    root = dataset_factory({"val": 2, "test": 2})
    common = [
        "model=fc_ef",
        "data=folder",
        f"data.root={root}",
        "data.num_workers=0",
        f"paths.runs_dir={tmp_path / 'runs'}",
        "strategy=mtkd",
        "device=cpu",
    ]
    cfg = compose_config("eval", *common)
    student_root = Path(cfg.selection).parent
    assert student_root == tmp_path / "runs" / "folder" / "fc_ef" / "student"
    for i, lam in enumerate((1e-3, 1e-2)):
        run = finished_run(student_root / f"lambda_{lam!r}", lam, 0.5 + i / 10)
        save_checkpoint(run / "best.ckpt", "fc_ef", seed=i)

    with pytest.raises(SystemExit):  # no selection and no lambda: one line
        eval_main.__wrapped__(cfg)
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {cfg.selection}: no lambda selection; run `python -m cdkd.pipeline` (it selects "
        "lambda on validation) or give distill.lambda=VALUE"
    ]

    runs = {lam: student_root / f"lambda_{lam!r}" for lam in (1e-3, 1e-2)}
    Path(cfg.selection).write_text(json.dumps(select_lambda(runs)))
    eval_main.__wrapped__(cfg)
    out = json.loads((Path(cfg.out_dir) / "metrics.json").read_text())
    assert out["lambda"] == 1e-2
    assert out["checkpoint"] == str(runs[1e-2] / "best.ckpt")
    assert "lambda=0.01 (selected on validation" in capsys.readouterr().out

    eval_main.__wrapped__(compose_config("eval", *common, "distill.lambda=1e-3"))
    out = json.loads((Path(cfg.out_dir) / "metrics.json").read_text())
    assert out["lambda"] == 1e-3 and out["checkpoint"] == str(runs[1e-3] / "best.ckpt")


@pytest.mark.parametrize("partition", ["three", "two"])
def test_report_finds_the_students_by_the_run_folder_convention(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    partition: str,
) -> None:
    runs_dir = tmp_path / "elsewhere"
    monkeypatch.setenv("CDKD_RUNS_DIR", str(runs_dir))
    monkeypatch.chdir(tmp_path)
    suffix = "-two" if partition == "two" else ""
    sweep = runs_dir / "jl1cd" / "fc_ef" / f"student{suffix}"
    finished_run(sweep / "lambda_0.001", 1e-3, 0.6, test_miou=0.5)
    finished_run(sweep / "lambda_0.01", 1e-2, 0.7, test_miou=0.4)
    # The same overrides as the sweep, training-only ones included.
    report.main(["model=fc_ef", "data=jl1cd", f"partition={partition}", "trainer.devices=2"])
    written = json.loads((sweep / "sweep.json").read_text())
    assert [r["lambda"] for r in written["runs"]] == [1e-3, 1e-2]
    assert written["best"]["lambda"] == 1e-2
    assert "lambda sweep in" in capsys.readouterr().out


def test_report_takes_paths_runs_dir_or_an_explicit_folder_and_fails_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = tmp_path / "runs" / "synthetic" / "tinycd" / "student"
    finished_run(sweep / "lambda_0.005", 5e-3, 0.6)
    report.main([f"paths.runs_dir={tmp_path / 'runs'}"])
    assert (sweep / "sweep.md").is_file()
    other = tmp_path / "mine"
    finished_run(other / "a", 1e-4, 0.3)
    report.main([f"sweep={other}"])
    assert json.loads((other / "sweep.json").read_text())["best"]["lambda"] == 1e-4
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        report.main([f"paths.runs_dir={tmp_path / 'none'}"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'none'}/synthetic/tinycd/student: sweep folder not found"]


def test_report_lists_the_runs_of_one_seed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = tmp_path / "runs" / "synthetic" / "tinycd" / "student"
    finished_run(sweep / "lambda_0.001", 1e-3, 0.6, seed=42)
    finished_run(sweep / "lambda_0.01", 1e-2, 0.5, seed=42)
    finished_run(sweep / "lambda_0.01-seed7", 1e-2, 0.9, seed=7)
    runs_dir = f"paths.runs_dir={tmp_path / 'runs'}"

    report.main([runs_dir])
    written = json.loads((sweep / "sweep.json").read_text())
    assert written["seed"] == 42
    assert [r["run"] for r in written["runs"]] == [
        str(sweep / "lambda_0.001"),
        str(sweep / "lambda_0.01"),
    ]
    assert written["best"]["lambda"] == 1e-3
    assert "seed 42" in (sweep / "sweep.md").read_text()

    report.main([runs_dir, "seed=7"])
    written = json.loads((sweep / "sweep.json").read_text())
    assert written["seed"] == 7 and written["best"]["run"] == str(sweep / "lambda_0.01-seed7")
    assert len(written["runs"]) == 1

    capsys.readouterr()
    with pytest.raises(SystemExit):
        report.main([runs_dir, "seed=3"])
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {sweep}: no runs of seed 3 (sub-folders with a run's config) found "
        "(runs of seed 42, 7: give seed=N)"
    ]
