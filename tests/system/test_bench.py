"""The benchmark script runs (smoke mode) and reports every measurement with consistent ratios."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench.py"


@pytest.mark.slow  # ~25 s of a benchmark subprocess; make test-all runs it
def test_bench_smoke_prints_one_json_line_per_measurement() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--models", "tinycd"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    results = {line["bench"]: line for line in lines}
    assert sorted(results) == ["data", "decode", "eval", "inference", "train_step"]
    assert all(results[name]["model"] == "tinycd" for name in ("train_step", "eval", "inference"))
    train = results["train_step"]
    ratio = train["student_step_s"] / train["baseline_step_s"]
    assert abs(train["ratio"] - ratio) < 1e-3 * ratio
    evaluation = results["eval"]
    ratio = evaluation["metrics_step_s"] / evaluation["plain_step_s"]
    assert abs(evaluation["ratio"] - ratio) < 1e-3 * ratio
    inference = results["inference"]
    ratio = inference["baseline_pairs_per_s"] / inference["op_pairs_per_s"]
    assert abs(inference["op_ratio"] - ratio) < 1e-2 * ratio
    assert results["decode"]["pillow_image_ms"] > 0 and results["decode"]["opencv_image_ms"] > 0
    assert results["data"]["augmented_pairs_per_s_per_worker"] > 0
