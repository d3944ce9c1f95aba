"""The real-data path end to end: JL1-CD layout, local backbone weights, lambda grid, O-P, MTKD."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from cdkd.models import create_model
from tests.factories import Composer

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "paper_dryrun.py"


def load_script():
    spec = importlib.util.spec_from_file_location("paper_dryrun", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stand_in_weights_fit_the_part_and_are_kept(tmp_path: Path) -> None:
    script = load_script()
    target = tmp_path / "w" / "mit_b0.pth"
    assert script.write_stand_in_weights("changer_b0", str(target)) == [target]
    state = torch.load(target, weights_only=True)
    backbone = create_model("changer_b0").get_submodule("backbone").state_dict()
    assert state.keys() == backbone.keys()
    assert all(state[k].shape == backbone[k].shape for k in state)
    before = target.read_bytes()
    assert script.write_stand_in_weights("changer_b0", str(target)) == []  # never overwritten
    assert target.read_bytes() == before


def test_paper_dryrun_baseline_trains_from_the_local_backbone_file(
    tmp_path: Path, compose_config: Composer
) -> None:
    """The dry run's first stage in this process: JL1-CD layout, local weights, val from train."""
    from cdkd.training.run import train

    script = load_script()
    data = tmp_path / "data"
    overrides = [
        "experiment=paper_dryrun",
        "data.synthetic.size=64",
        "schedule.max_steps=2",
        "logger=none",
    ]
    weights = data / "jl1cd-dryrun-weights" / "mit_b0.pth"
    assert script.write_stand_in_weights("changer_b0", str(weights)) == [weights]
    cfg = compose_config("train", *overrides)  # data and runs in tmp_path
    assert cfg.data.name == "jl1cd" and cfg.model.pretrained
    result = train(cfg)
    root = data / "jl1cd-dryrun"
    assert not (root / "val").exists() and (root / "train" / "A" / "40.png").is_file()
    run_dir = tmp_path / "runs" / "jl1cd" / "changer_b0" / "baseline"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["val"]["count"] == 8 and metrics["test"]["count"] == 12
    assert 0.0 <= result["test/mIoU"] <= 1.0
    # The checkpoint records where the backbone came from.
    hparams = torch.load(run_dir / "best.ckpt", weights_only=True)["hyper_parameters"]
    assert hparams["backbone_weights"] == {"backbone": str(weights)}


@pytest.mark.slow
def test_paper_dryrun_runs_the_real_data_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    script = load_script()
    data, runs = tmp_path / "data", tmp_path / "runs"
    script.main(
        [
            f"paths.data_dir={data}",
            f"paths.runs_dir={runs}",
            "data.synthetic.size=64",
            "logger=none",
        ]
    )
    # The generated data has JL1-CD's layout: natural names, no val/ folder.
    root = data / "jl1cd-dryrun"
    assert sorted(p.name for p in root.iterdir() if p.is_dir() and p.name[0] != ".") == [
        "test",
        "train",
    ]
    assert (root / "train" / "A" / "40.png").is_file() and (root / "test/label/12.png").is_file()
    weights = data / "jl1cd-dryrun-weights" / "mit_b0.pth"
    assert weights.is_file()

    model_dir = runs / "jl1cd" / "changer_b0"
    baseline = model_dir / "baseline"
    config = (baseline / "config.yaml").read_text()
    assert f"backbone_weights: {weights}" in config and "pretrained: true" in config
    metrics = json.loads((baseline / "metrics.json").read_text())
    assert metrics["val"]["count"] == 8 and metrics["test"]["count"] == 12
    for teacher in ("teacher_s", "teacher_m", "teacher_l"):
        assert (model_dir / teacher / "best.ckpt").is_file()

    selection = json.loads((model_dir / "student" / "selection.json").read_text())
    assert [float(x) for x in selection["grid"]] == [1e-4, 1e-3]
    results = json.loads((model_dir / "results.json").read_text())
    assert float(results["lambda"]) == float(selection["selected"]["lambda"])
    assert set(results["rows"]) == {"-", "O-P", "MTKD"}
    markdown = (model_dir / "results.md").read_text()
    assert "selected on validation" in markdown
