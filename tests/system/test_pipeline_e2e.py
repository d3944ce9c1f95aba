"""End to end through the command-line tools: train -> eval -> predict -> score -> pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cdkd.cli import pipeline
from cdkd.cli.pipeline import IN_PROCESS
from tests.factories import run_tool


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("e2e")
    common = (f"paths.data_dir={root / 'data'}", f"paths.runs_dir={root / 'runs'}")
    run_tool(
        "cdkd.train", "experiment=smoke", "model=fc_siam_diff", "logger=none", *common, cwd=root
    )
    run_dir = root / "runs" / "synthetic" / "fc_siam_diff" / "baseline"
    return {"root": root, "run_dir": run_dir, "data": root / "data" / "synthetic-smoke"}


def test_train_writes_the_run_folder(trained: dict[str, Path]) -> None:
    run_dir = trained["run_dir"]
    for name in ("best.ckpt", "last.ckpt", "config.yaml", "metrics.json"):
        assert (run_dir / name).is_file(), name
    for split in ("val", "test"):
        assert (run_dir / "eval" / split / "per_image.csv").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test"]["count"] == 12 and metrics["val"]["count"] == 12
    assert 0.0 <= metrics["test"]["per_image"]["mIoU"] <= 1.0


def test_eval_predict_and_score_agree(trained: dict[str, Path]) -> None:
    root, run_dir, data = trained["root"], trained["run_dir"], trained["data"]
    common = (f"paths.data_dir={root / 'data'}", f"paths.runs_dir={root / 'runs'}")
    run_tool(
        "cdkd.eval",
        "experiment=smoke",
        "model=fc_siam_diff",
        "save_predictions=true",
        *common,
        cwd=root,
    )
    evaluated = json.loads((run_dir / "eval" / "test" / "metrics.json").read_text())
    rows = (run_dir / "eval" / "test" / "per_image.csv").read_text().splitlines()
    assert rows[0].startswith("name,car,mIoU") and len(rows) == 1 + 12

    preds = root / "predictions"
    run_tool(
        "cdkd.predict",
        "model=fc_siam_diff",
        f"weights={run_dir / 'best.ckpt'}",
        f"input={data / 'test'}",
        f"output={preds}",
        cwd=root,
    )
    assert len(list(preds.glob("*.png"))) == 12
    out = root / "score.json"
    run_tool("cdkd.score", f"pred={preds}", f"gt={data / 'test' / 'label'}", f"out={out}", cwd=root)
    scored = json.loads(out.read_text())
    assert scored["count"] == evaluated["count"] == 12
    for key, value in evaluated["per_image"].items():
        assert scored["per_image"][key] == pytest.approx(value, abs=1e-9), key
    for key, value in evaluated["pooled"].items():
        assert scored["pooled"][key] == pytest.approx(value, abs=1e-9), key


# slow: tests/cli/test_hostile_input.py checks the same through cdkd.predict by default
@pytest.mark.slow
def test_predict_reports_unreadable_pairs_and_keeps_going(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    data, run_dir = trained["data"], trained["run_dir"]
    for sub in ("A", "B"):
        (tmp_path / "in" / sub).mkdir(parents=True)
        for name in ("0000.png", "0001.png"):
            (tmp_path / "in" / sub / name).write_bytes((data / "test" / sub / name).read_bytes())
    (tmp_path / "in" / "B" / "0001.png").write_bytes(b"")
    proc = run_tool(
        "cdkd.predict",
        "model=fc_siam_diff",
        f"weights={run_dir / 'best.ckpt'}",
        f"input={tmp_path / 'in'}",
        f"output={tmp_path / 'out'}",
        cwd=tmp_path,
        code=None,
    )
    assert proc.returncode != 0
    assert "0001.png" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["0000.png"]


# slow: tests/cli/test_hostile_input.py checks another model's weights by default
@pytest.mark.slow
def test_eval_with_checkpoint_of_another_model_fails_in_one_line(
    trained: dict[str, Path],
) -> None:
    root, run_dir = trained["root"], trained["run_dir"]
    proc = run_tool(
        "cdkd.eval",
        "experiment=smoke",
        "model=tinycd",
        f"checkpoint={run_dir / 'best.ckpt'}",
        f"paths.data_dir={root / 'data'}",
        f"paths.runs_dir={root / 'runs'}",
        cwd=root,
        code=None,
    )
    assert proc.returncode == 1
    assert "is for model 'fc_siam_diff', not 'tinycd'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_smoke_pipeline_writes_the_table_iii_block(
    trained: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = trained["root"]
    common = [f"paths.data_dir={root / 'data'}", f"paths.runs_dir={root / 'runs'}"]
    # The steps run in this process (--in-process); the second pipeline below runs its step
    # in a process of its own, as by default.
    monkeypatch.chdir(root)
    pipeline.main([IN_PROCESS, "experiment=smoke", "model=fc_siam_diff", "logger=none", *common])
    stdout = capsys.readouterr().out
    assert "skip (done)" in stdout  # the baseline trained by the fixture is reused
    model_dir = root / "runs" / "synthetic" / "fc_siam_diff"
    results = json.loads((model_dir / "results.json").read_text())
    assert list(results["rows"]) == ["-", "O-P", "MTKD"]
    for row in results["rows"].values():
        assert set(row) == {"mIoU", "mAcc", "mPrecision", "mFscore"}
    assert sum(sum(r.values()) for r in results["routing"].values()) == 12
    for stage in ("teacher_s", "teacher_m", "teacher_l"):
        assert (model_dir / stage / "best.ckpt").is_file(), stage
    # One student per lambda of the smoke grid, each scored on validation only.
    students = {0.001: model_dir / "student" / "lambda_0.001"}
    students[0.01] = model_dir / "student" / "lambda_0.01"
    for run in students.values():
        recorded = json.loads((run / "metrics.json").read_text())
        assert recorded["val"]["count"] == 12 and "test" not in recorded, run
        assert not (run / "eval" / "test").exists(), run
    # The choice: the best validation mIoU (the smaller lambda on a tie), recorded once.
    selection = json.loads((model_dir / "student" / "selection.json").read_text())
    val = {r["lambda"]: r["val"]["mIoU"] for r in selection["runs"]}
    chosen = selection["selected"]["lambda"]
    assert list(val) == [0.001, 0.01]
    assert chosen == min(val, key=lambda lam: (-val[lam], lam))
    assert results["lambda"] == chosen
    assert results["lambda_selection"]["selected"]["lambda"] == chosen
    # Only the selected student was evaluated on test, and its score is the MTKD row.
    mtkd = json.loads((model_dir / "eval" / "mtkd" / "test" / "metrics.json").read_text())
    assert mtkd["checkpoint"] == str(students[chosen] / "best.ckpt")
    assert results["rows"]["MTKD"]["mIoU"] == mtkd["per_image"]["mIoU"]
    markdown = (model_dir / "results.md").read_text()
    assert "| Strategy | mIoU | mAcc | mPrecision | mFscore |" in markdown
    assert f"lambda={chosen:g} selected on validation" in markdown
    assert "| Model | lambda | mIoU | mAcc | mPrecision | mFscore | selected |" in markdown
    baseline_val = results["lambda_selection"]["baseline_val"]["mIoU"]
    assert f"| M_O | - | {100 * baseline_val:.2f} |" in markdown
    assert f"| M_S | {chosen:g} | {100 * val[chosen]:.2f} |" in markdown
    assert "selected on validation" in stdout and "M_O" in stdout
    # The evaluations agree with the files they summarise.
    original = json.loads((model_dir / "eval" / "original" / "test" / "metrics.json").read_text())
    assert results["rows"]["-"]["mIoU"] == original["per_image"]["mIoU"]
    # The paper's figures and tables come from what the pipeline wrote.
    items = "what=[car,ranges,classes,models]"
    run_tool("cdkd.analyze", "experiment=smoke", "model=fc_siam_diff", items, *common, cwd=root)
    analysis = model_dir / "analysis"
    for name in ("car_distribution.png", "car_ranges-test.png", "car_ranges-test.md"):
        assert (analysis / name).stat().st_size > 0, name
    assert "MTKD" in (analysis / "classes-test.md").read_text()
    assert "fc_siam_diff" in (root / "runs" / "synthetic" / "results.md").read_text()
    # Again with the other lambda alone: every student is done (skipped); only the MTKD
    # evaluation runs again, for the newly selected student.
    other = 0.01 if chosen == 0.001 else 0.001
    grid = f"distill.lambdas=[{other}]"
    again = run_tool(
        "cdkd.pipeline",
        "experiment=smoke",
        "model=fc_siam_diff",
        "logger=none",
        grid,
        *common,
        cwd=root,
    )
    assert [line for line in again.stdout.splitlines() if line.startswith("run:")] == [
        "run: python -m cdkd.eval experiment=smoke model=fc_siam_diff "
        f"{grid} {' '.join(common)} strategy=mtkd (the selected student changed)"
    ]
    mtkd = json.loads((model_dir / "eval" / "mtkd" / "test" / "metrics.json").read_text())
    assert mtkd["checkpoint"] == str(students[other] / "best.ckpt")
    assert json.loads((model_dir / "results.json").read_text())["lambda"] == other
