"""`make demo`: generate the synthetic dataset, train the baseline, evaluate, print Table III.

Runs the same command-line tools a user would (``python -m cdkd.train`` / ``cdkd.eval``) with
``experiment=demo``; extra arguments are passed on as Hydra overrides.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from cdkd.analysis.tables import strategy_table


def main(overrides: list[str]) -> None:
    """Train and evaluate the demo model, then print its results in the paper's format."""
    args = ["experiment=demo", *overrides]
    for tool in ("cdkd.train", "cdkd.eval"):
        subprocess.run([sys.executable, "-m", tool, *args], check=True)
    metrics = json.loads(Path("runs/synthetic/tinycd/baseline/eval/test/metrics.json").read_text())
    title = "TinyCD on the synthetic test split (per-image averaged, %)"
    Console().print(strategy_table({"-": metrics["per_image"]}, title))


if __name__ == "__main__":
    main(sys.argv[1:])
