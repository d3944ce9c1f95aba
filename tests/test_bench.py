"""The benchmark script runs (smoke mode) and reports both step times and their ratio."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"


def test_bench_smoke_prints_one_json_line_per_model() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--models", "fc_siam_diff"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1
    result = lines[0]
    assert result["model"] == "fc_siam_diff" and result["bench"] == "train_step"
    assert result["baseline_step_s"] > 0 and result["student_step_s"] > 0
    ratio = result["student_step_s"] / result["baseline_step_s"]
    assert abs(result["ratio"] - ratio) < 1e-3 * ratio
