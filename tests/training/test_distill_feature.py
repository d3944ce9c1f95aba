"""Feature distillation (``distill.loss=feature``): the loss, the adapter, training and export."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cdkd.models import create_model
from cdkd.models.checkpoint import load_network
from cdkd.training.distill import DistillationModule, align_features, feature_adapter
from cdkd.training.distill_losses import distill_loss
from cdkd.training.routing import Routing, teacher_weights
from tests.factories import THREE, Composer, run_tool, save_checkpoint, save_teachers

SIZE = 32

# ---------------------------------------------------------------- the loss, by hand


def test_plain_feature_loss_is_the_mean_squared_difference() -> None:
    s = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 2, 1, 2)  # 2 channels, 2 positions
    t = torch.tensor([[1.0, 0.0], [0.0, 4.0]]).view(1, 2, 1, 2)
    assert distill_loss("feature", s, t).item() == pytest.approx((0 + 4 + 9 + 0) / 4)


def test_l2_feature_loss_compares_directions_per_position() -> None:
    # position 0: (3, 4) against (6, 8), the same direction; position 1: (1, 0) against (0, 2),
    # orthogonal: ||(1, 0) - (0, 1)||^2 = 2; the mean over the two positions is 1.
    s = torch.tensor([[3.0, 1.0], [4.0, 0.0]]).view(1, 2, 1, 2)
    t = torch.tensor([[6.0, 0.0], [8.0, 2.0]]).view(1, 2, 1, 2)
    assert distill_loss("feature", s, t, feature_norm="l2").item() == pytest.approx(1.0)
    assert distill_loss("feature", s, t).item() == pytest.approx((9 + 1 + 16 + 4) / 4)


def test_features_are_adapted_then_resized_to_the_teacher_s_grid() -> None:
    adapter = feature_adapter(2, 3)
    assert isinstance(adapter, nn.Conv2d) and adapter.kernel_size == (1, 1)
    student, teacher = torch.randn(1, 2, 4, 4), torch.randn(1, 3, 8, 8)
    s, t = align_features(student, teacher, adapter)
    expected = F.interpolate(adapter(student), size=(8, 8), mode="bilinear", align_corners=False)
    assert t is teacher and torch.equal(s, expected)
    assert feature_adapter(16, 16) is None
    same = torch.randn(1, 3, 8, 8)
    assert align_features(same, teacher, None)[0] is same


# ---------------------------------------------------------------- the student module


@pytest.fixture
def checkpoints(tmp_path: Path) -> dict[str, Any]:
    origin = save_checkpoint(tmp_path / "origin.ckpt", "fc_siam_diff", None, THREE, 0)
    return {
        "origin": str(origin),
        "same": save_teachers(tmp_path, "fc_siam_diff"),
        "tinycd": save_teachers(tmp_path, "tinycd"),
    }


def student(ckpts: dict[str, Any], teacher_model: str = "tinycd", **kw: Any) -> DistillationModule:
    options: dict[str, Any] = {
        "init": ckpts["origin"],
        "teachers": ckpts[teacher_model if teacher_model == "tinycd" else "same"],
        "teacher_model": teacher_model,
        "distill_lambda": 1.0,
        "partition": THREE,
        "model": "fc_siam_diff",
        "loss": "ce",
        "distill_loss": "feature",
        "max_steps": 10,
        "warmup_steps": 2,
    }
    return DistillationModule(**{**options, **kw})


def batch() -> dict[str, Any]:
    torch.manual_seed(123)
    mask = torch.zeros(4, SIZE, SIZE, dtype=torch.long)
    for i, n in enumerate([0, 100, 400, 800]):  # CAR 0, 0.1, 0.39, 0.78: small, medium, large
        mask[i].view(-1)[:n] = 1
    return {
        "image1": torch.randn(4, 3, SIZE, SIZE),
        "image2": torch.randn(4, 3, SIZE, SIZE),
        "mask": mask,
    }


def test_the_adapter_exists_only_when_the_widths_differ(checkpoints: dict[str, Any]) -> None:
    cross = student(checkpoints)
    assert cross.net.feature_channels == 16 and cross.teachers[0].feature_channels == 32
    assert isinstance(cross.feature_adapter, nn.Conv2d)
    assert (cross.feature_adapter.in_channels, cross.feature_adapter.out_channels) == (16, 32)
    assert student(checkpoints, "fc_siam_diff").feature_adapter is None
    assert student(checkpoints, distill_loss="mse").feature_adapter is None
    assert student(checkpoints, distill_lambda=0.0).feature_adapter is None
    assert not any(k.startswith("net.feature") for k in cross.state_dict())


def test_the_adapter_is_trained_with_the_network_s_schedule(checkpoints: dict[str, Any]) -> None:
    module = student(checkpoints)
    config = module.configure_optimizers()
    optimizer = config["optimizer"]
    groups = optimizer.param_groups
    assert module.feature_adapter is not None
    adapter = {id(p) for p in module.feature_adapter.parameters()}
    assert {id(p) for p in groups[-1]["params"]} == adapter
    assert sum(len(g["params"]) for g in groups) == len(list(module.parameters()))
    # every group starts at the warm-up's first rate, relative to its own base rate
    assert groups[-1]["lr"] == pytest.approx(groups[0]["lr"])
    assert groups[-1]["lr"] < groups[-1]["initial_lr"]


def reference_loss(
    module: DistillationModule, data: dict[str, Any], routing: Routing
) -> torch.Tensor:
    """The feature loss spelt out: every teacher on every sample, weighted per sample."""
    with torch.no_grad():
        targets = [t.forward_features(data["image1"], data["image2"])[0] for t in module.teachers]
    car = data["mask"].flatten(1).float().mean(1)
    w = teacher_weights(car, THREE["thresholds"], routing, soft_width=module.soft_width)
    target = sum(w[:, k].view(-1, 1, 1, 1) * targets[k] for k in range(3))
    assert isinstance(target, torch.Tensor)
    features, _ = module.net.forward_features(data["image1"], data["image2"])
    adapted = module.feature_adapter(features) if module.feature_adapter is not None else features
    return F.mse_loss(adapted, target)


@pytest.mark.parametrize("routing", ["car", "soft"])
def test_feature_loss_against_the_routed_teachers(
    checkpoints: dict[str, Any], routing: Routing
) -> None:
    module = student(checkpoints, routing=routing, soft_width=0.1).eval()
    data = batch()
    features, _ = module.net.forward_features(data["image1"], data["image2"])
    loss = module.distillation_loss(data, features)
    assert loss.item() == pytest.approx(reference_loss(module, data, routing).item(), rel=1e-5)
    loss.backward()
    assert module.feature_adapter is not None and module.feature_adapter.weight.grad is not None


def test_training_step_distils_the_feature_map(checkpoints: dict[str, Any]) -> None:
    module = student(checkpoints, "fc_siam_diff").eval()  # no dropout: one forward as another
    data = batch()
    loss = module.training_step(data, 0)
    task, _ = module.task_loss(data)
    kd = reference_loss(module, data, "car")
    assert loss.item() == pytest.approx((task + kd).item(), rel=1e-5)
    assert kd.item() > 0


# ---------------------------------------------------------------- training, checkpoint, export


def train_feature_student(compose_config: Composer, checkpoints: dict[str, Any]) -> Path:
    """Train an FC-Siam-diff student from TinyCD teachers with the feature loss; its best.ckpt."""
    from cdkd.training.run import train

    teachers = ", ".join(f"{b}: '{p}'" for b, p in checkpoints["tinycd"].items())
    cfg = compose_config(
        "train",
        "experiment=smoke",
        "model=fc_siam_diff",
        "stage=student",
        "logger=none",
        "test_after_fit=false",
        "data.synthetic.counts={train: 8, val: 4, test: 4}",
        "schedule.distill_max_steps=2",
        "schedule.val_every=2",
        "schedule.warmup_steps=1",
        f"distill.init={checkpoints['origin']}",
        "distill.loss=feature",
        "distill.teacher_model=tinycd",
        f"distill.teachers={{{teachers}}}",
    )
    results = train(cfg)
    assert math.isfinite(results["val/mIoU"])
    return Path(results["best_checkpoint"])


def test_feature_student_trains_and_loads_as_the_plain_network(
    compose_config: Composer, checkpoints: dict[str, Any]
) -> None:
    ckpt = train_feature_student(compose_config, checkpoints)
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    state = saved["state_dict"]
    adapter = {k for k in state if k.startswith("feature_adapter.")}
    assert adapter == {"feature_adapter.weight", "feature_adapter.bias"}
    # the optimizer trained the adapter: its group (the last) has moments
    optimizer = saved["optimizer_states"][0]
    (weight, bias) = optimizer["param_groups"][-1]["params"]
    assert optimizer["state"][weight]["exp_avg"].shape == (32, 16, 1, 1)
    assert optimizer["state"][bias]["exp_avg"].abs().sum() > 0

    # what evaluation, prediction and export load is the plain zoo network
    net = load_network(ckpt, expected_model="fc_siam_diff")
    plain = create_model("fc_siam_diff")
    assert net.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict({k[len("net.") :]: v for k, v in state.items() if k.startswith("net.")})


@pytest.mark.slow  # ~50 s: the ONNX exporter traces the network twice
def test_feature_student_exports_to_onnx_without_the_adapter(
    tmp_path: Path, compose_config: Composer, checkpoints: dict[str, Any]
) -> None:
    from cdkd.inference.onnx import export_onnx

    ckpt = train_feature_student(compose_config, checkpoints)
    out = export_onnx(ckpt, tmp_path / "student.onnx", size=SIZE, atol=1e-4)
    graph = onnx.load(out.path)
    assert not any("adapter" in init.name for init in graph.graph.initializer)
    assert {p.key: p.value for p in graph.metadata_props}["model"] == "fc_siam_diff"


@pytest.mark.slow  # ~15 s, a subprocess; the in-process test above covers the same path
def test_cli_trains_a_feature_student_across_architectures(tmp_path: Path) -> None:
    origin = save_checkpoint(tmp_path / "origin.ckpt", "tinycd")
    teachers = save_teachers(tmp_path, "fc_siam_diff")
    listed = ", ".join(f"{b}: '{p}'" for b, p in teachers.items())
    run_tool(
        "cdkd.train",
        "experiment=smoke",
        "model=tinycd",
        "stage=student",
        "logger=none",
        "test_after_fit=false",
        "schedule.distill_max_steps=2",
        "schedule.val_every=2",
        "schedule.warmup_steps=1",
        f"paths.data_dir={tmp_path / 'data'}",
        f"paths.runs_dir={tmp_path / 'runs'}",
        f"distill.init={origin}",
        "distill.loss=feature",
        "distill.teacher_model=fc_siam_diff",
        f"distill.teachers={{{listed}}}",
        cwd=tmp_path,
    )
    (best,) = (tmp_path / "runs").rglob("best.ckpt")
    state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
    assert state["feature_adapter.weight"].shape == (16, 32, 1, 1)  # tinycd 32 -> fc_siam_diff 16
    load_network(best, expected_model="tinycd")
