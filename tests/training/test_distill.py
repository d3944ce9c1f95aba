"""Multi-teacher distillation (the student stage)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from cdkd.errors import CheckpointError
from cdkd.models import ChangeModel
from cdkd.training.checkpoints import load_network
from cdkd.training.distill import DistillationModule, align_logits
from cdkd.training.routing import route
from tests.factories import THREE, TWO, run_tool, save_checkpoint

SIZE = 32


@pytest.fixture
def checkpoints(tmp_path: Path) -> dict[str, Any]:
    origin = save_checkpoint(tmp_path / "origin.ckpt", "fc_siam_diff", None, THREE, 0)
    teachers = {
        b: save_checkpoint(tmp_path / f"t_{b}.ckpt", "fc_siam_diff", b, THREE, i + 1)
        for i, b in enumerate(THREE["buckets"])
    }
    return {"origin": origin, "teachers": teachers, "dir": tmp_path}


def student(ckpts: dict[str, Any], distill_lambda: float = 1e-3, **kw: Any) -> DistillationModule:
    options: dict[str, Any] = {
        "init": str(ckpts["origin"]),
        "teachers": {b: str(p) for b, p in ckpts["teachers"].items()},
        "distill_lambda": distill_lambda,
        "partition": THREE,
        "model": "fc_siam_diff",
        "loss": "ce",
    }
    options.update(kw)
    return DistillationModule(**options)


def masks_with_cars(changed: list[int]) -> torch.Tensor:
    """Labels of ``SIZE x SIZE`` pixels with the given numbers of changed pixels."""
    mask = torch.zeros(len(changed), SIZE, SIZE, dtype=torch.long)
    for i, n in enumerate(changed):
        mask[i].view(-1)[:n] = 1
    return mask


def batch_for(changed: list[int]) -> dict[str, Any]:
    torch.manual_seed(123)
    n = len(changed)
    return {
        "image1": torch.randn(n, 3, SIZE, SIZE),
        "image2": torch.randn(n, 3, SIZE, SIZE),
        "mask": masks_with_cars(changed),
        "name": [f"{i}.png" for i in range(n)],
    }


# 1024 pixels: 51 changed = 0.0498 (small), 52 = 0.0508 (medium), 204 = 0.199 (medium),
# 205 = 0.2002 (large).
CHANGED = [205, 0, 52, 51, 204, 1024]
EXPECTED_BUCKETS = [2, 0, 1, 0, 1, 2]


def test_route_groups_samples_by_their_car_bucket() -> None:
    order, counts = route(masks_with_cars(CHANGED), THREE["thresholds"])
    assert counts == [2, 2, 2]
    assert order.tolist() == [1, 3, 2, 4, 0, 5]


def test_route_uses_the_exact_threshold_rule() -> None:
    mask = torch.zeros(3, 20, 20, dtype=torch.long)
    mask[1].view(-1)[:20] = 1  # CAR exactly 0.05 -> small
    mask[2].view(-1)[:80] = 1  # CAR exactly 0.2 -> medium
    order, counts = route(mask, THREE["thresholds"])
    assert counts == [2, 1, 0] and order.tolist() == [0, 1, 2]


def test_route_excludes_ignore_pixels_from_car() -> None:
    # Rotation padding (255) is neither change nor valid background: 0 changed pixels stays
    # small, and 30 changed pixels among 128 valid ones (0.23) is large, not 30/1024 (small).
    mask = masks_with_cars([0, 30])
    mask[:, 4:] = 255
    order, counts = route(mask, THREE["thresholds"])
    assert counts == [1, 0, 1] and order.tolist() == [0, 1]


def test_student_starts_from_origin_weights(checkpoints: dict[str, Any]) -> None:
    module = student(checkpoints)
    origin = load_network(checkpoints["origin"])
    for key, value in origin.state_dict().items():
        assert torch.equal(module.net.state_dict()[key], value), key


def test_each_teacher_sees_only_its_samples_once_per_step(checkpoints: dict[str, Any]) -> None:
    module = student(checkpoints)
    batch = batch_for(CHANGED)
    seen: list[list[tuple[int, torch.Tensor]]] = [[] for _ in module.teachers]
    for k, teacher in enumerate(module.teachers):
        teacher.register_forward_hook(lambda m, args, out, k=k: seen[k].append(args[0].clone()))
    batch["route_order"], batch["route_counts"] = route(batch["mask"], THREE["thresholds"])
    logits = module.net(batch["image1"], batch["image2"])
    module.distillation_loss(batch, logits)
    for k in range(3):
        assert len(seen[k]) == 1, f"teacher {k} ran {len(seen[k])} times"
        expected = [i for i, b in enumerate(EXPECTED_BUCKETS) if b == k]
        assert torch.equal(seen[k][0], batch["image1"][expected])


def test_distillation_loss_is_the_mse_to_the_routed_teacher(checkpoints: dict[str, Any]) -> None:
    module = student(checkpoints)
    batch = batch_for(CHANGED)
    logits = module.net(batch["image1"], batch["image2"])
    expected = torch.stack(
        [
            module.teachers[b](batch["image1"][i : i + 1], batch["image2"][i : i + 1])[0]
            for i, b in enumerate(EXPECTED_BUCKETS)
        ]
    )
    loss = module.distillation_loss(batch, logits)
    assert loss.item() == pytest.approx(F.mse_loss(logits, expected).item(), rel=1e-5)


def test_teachers_stay_frozen_through_student_steps(checkpoints: dict[str, Any]) -> None:
    module = student(checkpoints, distill_lambda=1.0)
    module.train()
    before = [{k: v.clone() for k, v in t.state_dict().items()} for t in module.teachers]
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-2)
    for _ in range(2):
        optimizer.zero_grad()
        loss = module.training_step(batch_for(CHANGED), 0)
        loss.backward()
        optimizer.step()
    owned = {id(p) for p in module.parameters()}
    for teacher, state in zip(module.teachers, before, strict=True):
        assert not teacher.training
        for name, param in teacher.named_parameters():
            assert param.grad is None and not param.requires_grad, name
            assert id(param) not in owned, f"{name} would be optimised"
        for key, value in teacher.state_dict().items():
            assert torch.equal(value, state[key]), f"teacher tensor {key} changed"
    assert not any(k.startswith("teachers") for k in module.state_dict())


def test_lambda_zero_trains_on_the_task_loss_alone(checkpoints: dict[str, Any]) -> None:
    module = student(checkpoints, distill_lambda=0.0)
    batch = batch_for(CHANGED)
    module.eval()  # deterministic forward (dropout off) for the comparison
    task, _ = module.task_loss(batch)
    assert module.training_step(batch, 0).item() == pytest.approx(task.item())


def test_student_checkpoint_predicts_without_teachers(checkpoints: dict[str, Any]) -> None:
    module = student(checkpoints)
    path = checkpoints["dir"] / "student.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    for teacher in checkpoints["teachers"].values():
        teacher.unlink()
    net = load_network(path, expected_model="fc_siam_diff").eval()
    batch = batch_for([0, 300])
    with torch.no_grad():
        assert torch.equal(
            net(batch["image1"], batch["image2"]),
            module.net.eval()(batch["image1"], batch["image2"]),
        )


def test_cross_architecture_maps_one_and_two_channel_heads(tmp_path: Path) -> None:
    origin = save_checkpoint(tmp_path / "o.ckpt", "fc_siam_diff", None, THREE, 0)
    teachers = {
        b: str(save_checkpoint(tmp_path / f"{b}.ckpt", "tinycd", b, THREE, 5))
        for b in THREE["buckets"]
    }
    ckpts = {"origin": origin, "teachers": teachers, "dir": tmp_path}
    with pytest.raises(CheckpointError, match="is for model 'tinycd', not 'fc_siam_diff'"):
        student(ckpts)
    module = student(ckpts, teacher_model="tinycd")
    batch = batch_for(CHANGED)
    logits = module.net(batch["image1"], batch["image2"])  # [B, 2, h, w]
    loss = module.distillation_loss(batch, logits)
    expected = torch.cat(
        [
            align_logits(
                logits[i : i + 1],
                module.teachers[b](batch["image1"][i : i + 1], batch["image2"][i : i + 1]),
                module.net,
                module.teachers[b],
            )[1]
            for i, b in enumerate(EXPECTED_BUCKETS)
        ]
    )
    log_odds = logits[:, 1:2] - logits[:, 0:1]
    assert loss.item() == pytest.approx(F.mse_loss(log_odds, expected).item(), rel=1e-5)
    loss.backward()


def test_align_resizes_teacher_logits_to_the_student_head() -> None:
    student_logits, teacher_logits = torch.zeros(2, 2, 8, 8), torch.ones(2, 1, 32, 32)
    fake = ChangeModel()
    s, t = align_logits(student_logits, teacher_logits, fake, fake)
    assert s.shape == t.shape == (2, 1, 8, 8)
    assert torch.allclose(t, torch.ones_like(t))


def test_teacher_of_another_partition_is_rejected(checkpoints: dict[str, Any]) -> None:
    two_way = save_checkpoint(checkpoints["dir"] / "two.ckpt", "fc_siam_diff", "small", TWO, 9)
    checkpoints["teachers"]["small"] = two_way
    with pytest.raises(CheckpointError, match=r"two\.ckpt.*thresholds \[0\.1\]"):
        student(checkpoints)


def test_teacher_of_another_bucket_is_rejected(checkpoints: dict[str, Any]) -> None:
    teachers = checkpoints["teachers"]
    teachers["small"], teachers["large"] = teachers["large"], teachers["small"]
    with pytest.raises(CheckpointError, match=r"bucket 'large'.*expected bucket 'small'"):
        student(checkpoints)


def test_missing_teacher_is_named(checkpoints: dict[str, Any]) -> None:
    checkpoints["teachers"]["medium"].unlink()
    with pytest.raises(CheckpointError, match=r"t_medium\.ckpt: checkpoint not found"):
        student(checkpoints)


def test_negative_lambda_is_rejected(checkpoints: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="lambda must be >= 0"):
        student(checkpoints, distill_lambda=-1.0)


#: Tensor methods that read a value back to the host (a device-to-host wait on a GPU).
HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")


@contextlib.contextmanager
def host_reads_fail() -> Iterator[None]:
    """Make every host read of a tensor an error while the block runs."""

    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a training step read a tensor back to the host")

    saved = {name: getattr(torch.Tensor, name) for name in HOST_READS}
    try:
        for name in HOST_READS:
            setattr(torch.Tensor, name, fail)
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


def _fit_student(
    ckpts: dict[str, Any],
    guard: Callable[[], contextlib.AbstractContextManager],
    device: str,
    whole_step: bool,
) -> list[int]:
    """Fit the student for four steps (the third with a NaN loss, skipped); from the second
    step on, ``guard`` is around each training step and the gradient guard before its
    optimizer step or, with ``whole_step``, around the whole optimizer step (forward,
    backward, update). The first step creates the optimizer state and the logged metrics."""
    import lightning as L

    guarded: list[int] = []

    class Guarded(DistillationModule):
        def task_loss(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
            loss, logits = super().task_loss(batch)
            return (loss * float("nan") if self.global_step == 2 else loss), logits

        def _guard(self, scope_is_whole_step: bool) -> contextlib.AbstractContextManager:
            active = self.global_step > 0 and scope_is_whole_step == whole_step
            return guard() if active else contextlib.nullcontext()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            guarded.append(self.global_step)
            with self._guard(False):
                return super().training_step(batch, batch_idx)

        def on_before_optimizer_step(self, optimizer: Any) -> None:
            with self._guard(False):
                super().on_before_optimizer_step(optimizer)

        def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
            with self._guard(True):
                super().optimizer_step(*args, **kwargs)

    torch.manual_seed(0)
    module = Guarded(
        init=str(ckpts["origin"]),
        teachers={b: str(p) for b, p in ckpts["teachers"].items()},
        distill_lambda=1e-3,
        partition=THREE,
        model="fc_siam_diff",
        loss="ce",
        nan_policy="skip",
        max_steps=4,
        warmup_steps=1,
    )
    data = batch_for(CHANGED + CHANGED[:2])
    items = [{k: v[i] for k, v in data.items()} for i in range(len(CHANGED) + 2)]
    trainer = L.Trainer(
        accelerator=device,
        devices=1,
        max_steps=4,
        limit_val_batches=0,
        log_every_n_steps=50,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(module, torch.utils.data.DataLoader(items, batch_size=2))
    assert all(bool(torch.isfinite(p).all()) for p in module.parameters())
    return guarded


def test_student_steps_read_nothing_back_to_the_host(checkpoints: dict[str, Any]) -> None:
    assert _fit_student(checkpoints, host_reads_fail, "cpu", whole_step=False) == [0, 1, 2, 3]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_student_steps_never_synchronise_the_gpu(checkpoints: dict[str, Any]) -> None:
    @contextlib.contextmanager
    def sync_is_an_error() -> Iterator[None]:
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")

    assert _fit_student(checkpoints, sync_is_an_error, "gpu", whole_step=True) == [0, 1, 2, 3]


@pytest.mark.slow  # ~20 s; two-process DDP is covered by tests/system/test_multigpu.py
def test_student_trains_under_two_process_ddp(checkpoints: dict[str, Any]) -> None:
    import json

    root = checkpoints["dir"]
    teachers = ", ".join(f"{b}: '{p}'" for b, p in checkpoints["teachers"].items())
    args = [
        "experiment=smoke",
        "model=fc_siam_diff",
        "stage=student",
        "logger=none",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        f"paths.data_dir={root / 'data'}",
        f"paths.runs_dir={root / 'runs'}",
        f"distill.init={checkpoints['origin']}",
        f"distill.teachers={{{teachers}}}",
    ]
    run_tool("cdkd.train", *args, cwd=root)
    run_dir = root / "runs" / "synthetic" / "fc_siam_diff" / "student" / "lambda_0.001"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["val"]["count"] == 12 and metrics["test"]["count"] == 12


def test_official_car_rule_counts_padding_as_change_and_uses_strict_bounds() -> None:
    mask = torch.zeros(3, 10, 10, dtype=torch.long)
    mask[0, :, :1] = 255  # 10% rotation padding, no change
    mask[1, :5] = 1  # CAR exactly 0.5 with thresholds (0.05, 0.5)
    mask[2, :1, :5] = 1  # CAR 0.05, on the first threshold
    thresholds = (0.05, 0.5)
    _, paper = route(mask, thresholds)
    _, official = route(mask, thresholds, "official")
    # paper: sample 0 has CAR 0 (small), 1 is medium (<= 0.5), 2 is small (<= 0.05)
    assert paper == [2, 1, 0]
    # official: padding makes 0 medium, 1 is large (not < 0.5), 2 is medium (not < 0.05)
    assert official == [0, 2, 1]
