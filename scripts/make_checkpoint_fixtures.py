"""Shrink a finished smoke pipeline's checkpoints into the format-compatibility fixture.

The fixture under ``tests/fixtures/runs_v1`` holds checkpoints exactly as cdkd wrote them
before checkpoint metadata became a versioned record; tests check they still evaluate. Only
the optimizer state is dropped (it is never read for evaluation) to keep the files small.

Usage (from the repository root, after training the smoke stages of TinyCD):
    for s in baseline teacher_s teacher_m teacher_l student; do
        python -m cdkd.train experiment=smoke model=tinycd stage=$s \
            paths.runs_dir=/tmp/v1/runs paths.data_dir=/tmp/v1/data
    done
    python scripts/make_checkpoint_fixtures.py /tmp/v1/runs/synthetic/tinycd
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

STAGES = ("baseline", "teacher_s", "teacher_m", "teacher_l", "student/lambda_0.005")
OUT = (
    Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "runs_v1" / "synthetic" / "tinycd"
)


def main() -> None:
    """Copy each stage's best.ckpt without optimizer state into the fixture folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path, help="runs/<data>/<model> of a finished run")
    args = parser.parse_args()
    for stage in STAGES:
        ckpt = torch.load(
            args.model_dir / stage / "best.ckpt", map_location="cpu", weights_only=False
        )
        ckpt["optimizer_states"] = []
        target = OUT / stage / "best.ckpt"
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save(ckpt, target)
        print(f"{target} ({target.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
