"""Run folders written by earlier releases keep evaluating (checkpoint format compatibility)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from cdkd.cli.eval import main as eval_main
from cdkd.models.checkpoint import load_network
from tests.factories import Composer

FIXTURE = Path(__file__).parents[1] / "fixtures" / "runs_v1"


@pytest.mark.parametrize(
    ("strategy", "checkpoint"),
    [("original", "baseline"), ("op", None), ("mtkd", "student/lambda_0.005")],
)
def test_checkpoints_of_the_first_release_still_evaluate(
    tmp_path: Path, compose_config: Composer, strategy: str, checkpoint: str | None
) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(FIXTURE, runs)
    overrides = [
        "experiment=smoke",
        "model=tinycd",
        f"strategy={strategy}",
        f"paths.runs_dir={runs}",
        "distill.lambda=0.005",
    ]
    cfg = compose_config("eval", *overrides)
    eval_main.__wrapped__(cfg)
    result = json.loads((Path(cfg.out_dir) / "metrics.json").read_text())
    assert result["strategy"] == strategy
    assert 0.0 <= result["per_image"]["mIoU"] <= 1.0
    if checkpoint is not None:
        model_dir = runs / "synthetic" / "tinycd"
        assert result["checkpoint"] == str(model_dir / checkpoint / "best.ckpt")
        path = model_dir / checkpoint / "best.ckpt"
        stored = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
        loaded = load_network(path, expected_model="tinycd").state_dict()
        assert loaded and all(torch.equal(v, stored[f"net.{k}"]) for k, v in loaded.items())
    else:
        assert sum(sum(row.values()) for row in result["routing"].values()) == 12
