"""Reliability without a training run: config validation, split hygiene, non-finite losses,
atomic checkpoint writes, evaluation-setup checks and the provenance record."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from cdkd.data.config import datamodule_from_config
from cdkd.errors import CheckpointError, ConfigError
from cdkd.runs.meta import CheckpointMeta
from cdkd.training.callbacks import AtomicCheckpointIO, PreemptionCheckpoint, RngStateCallback
from cdkd.training.module import ChangeDetectionModule, NonFiniteLossError
from cdkd.training.run import (
    check_config,
    check_splits,
    finished_run,
    resume_checkpoint,
    train,
)
from cdkd.training.schedule import Schedule
from tests.factories import Composer


@pytest.fixture
def config(compose_config: Composer) -> Composer:
    """``config(*overrides)``: the training config without a logger."""
    return functools.partial(compose_config, "train", "logger=none")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["stage=student", "distill.lambda=-0.1"], "distill.lambda"),
        (["partition.thresholds=[0.2,0.05]"], "strictly increasing"),
        (["partition.thresholds=[0.1,0.1]"], "strictly increasing"),
        (["partition.thresholds=[0.05,1.5]"], "[0, 1]"),
        (["partition.thresholds=[-0.1,0.2]"], "[0, 1]"),
        (["data.batch_size=0"], "data.batch_size"),
        (["data.label_threshold=0"], "data.label_threshold must be an integer in 1..255"),
        (["data.label_threshold=half"], "data.label_threshold must be an integer in 1..255"),
        (["model.optimizer.lr=0"], "model.optimizer.lr"),
        (["model.optimizer.lr=-1e-3"], "model.optimizer.lr"),
        (["schedule.max_steps=0"], "schedule.max_steps"),
        (["schedule.val_every=-5"], "schedule.val_every"),
        (["model.loss=focal"], "unknown loss 'focal'"),
        (["model=changestar_farseg", "model.loss.dice=jaccard"], "model.loss.dice: unknown"),
        (["model.loss={kind:bce,average:median}"], "model.loss.average: unknown 'median'"),
        (["model.augment=mixup"], "unknown augmentation 'mixup'"),
        (["empty_policy=nan"], "empty_policy"),
        (["nan_policy=ignore"], "nan_policy"),
        (["resume=maybe"], "resume"),
        (["stage.kind=finetune"], "kind 'finetune' is not train/distill"),
        (["model.scheduler=step"], "model.scheduler 'step' must be one of"),
        (["stage=student", "distill.car_rule=strict"], "distill.car_rule 'strict' must be one of"),
        (["trainer.gradient_clip_val=-1"], "gradient_clip_val"),
        (["seed=abc"], "seed = 'abc' is not an integer"),
        (["data.batch_size=2.5"], "data.batch_size = 2.5 is not an integer"),
        (["model.optimizer.lr=fast"], "model.optimizer.lr = 'fast' is not a number"),
        (["schedule.max_steps=[1]"], "schedule.max_steps"),
    ],
)
def test_out_of_range_settings_fail_with_one_line(
    config: Composer, overrides: list[str], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        check_config(config(*overrides))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_default_configs_pass_validation(config: Composer) -> None:
    for stage in ("baseline", "teacher_s", "student"):
        check_config(config(f"stage={stage}"))
    check_config(config("partition=two", "stage=teacher_l"))


@pytest.fixture
def _split_cfg(config: Composer) -> Callable[..., DictConfig]:
    """``_split_cfg(root, *overrides)``: the training config on the folder dataset ``root``."""
    return lambda root, *overrides: config("data=folder", f"data.root={root}", *overrides)


def test_validation_on_the_test_split_is_an_error(
    dataset_factory: Callable[..., Path], _split_cfg: Callable[..., DictConfig]
) -> None:
    root = dataset_factory({"train": 4, "val": 2, "test": 2})
    cfg = _split_cfg(root)
    check_splits(cfg, datamodule_from_config(cfg))  # distinct splits pass
    cfg = _split_cfg(root, "data.splits.val=test")
    with pytest.raises(ConfigError, match="val and test are both 'test'"):
        check_splits(cfg, datamodule_from_config(cfg))
    os.symlink(root / "test", root / "holdout")  # the same files under another name
    cfg = _split_cfg(root, "data.splits.val=holdout")
    with pytest.raises(ConfigError, match="shares 2 pair"):
        check_splits(cfg, datamodule_from_config(cfg))
    for overrides in (["callbacks.model_checkpoint.monitor=test/mIoU"], ["optimized_metric=x"]):
        with pytest.raises(ConfigError, match="must use a val/ metric"):
            check_splits(_split_cfg(root, *overrides), datamodule_from_config(cfg))


def test_train_refuses_test_selection_before_writing_checkpoints(
    tmp_path: Path, dataset_factory: Callable[..., Path], _split_cfg: Callable[..., DictConfig]
) -> None:
    root = dataset_factory({"train": 4, "val": 2, "test": 2})
    run_dir = tmp_path / "run"
    cfg = _split_cfg(root, "data.splits.val=test", f"run_dir={run_dir}", "model.pretrained=false")
    with pytest.raises(ConfigError):
        train(cfg)
    assert not list(run_dir.glob("*.ckpt"))


def _module(nan_policy: str) -> ChangeDetectionModule:
    return ChangeDetectionModule("fc_ef", loss="ce", nan_policy=nan_policy)


def _batch(value: float) -> dict:
    image = torch.full((2, 3, 32, 32), value)
    return {
        "image1": image,
        "image2": image,
        "mask": torch.zeros(2, 32, 32, dtype=torch.long),
        "name": ["a b.png", "ü.png"],
    }


def test_non_finite_loss_is_kept_on_the_device_and_checked_later() -> None:
    module = _module("stop")
    assert torch.isfinite(module.training_step(_batch(0.5), 0))
    assert torch.isnan(module.training_step(_batch(float("nan")), 0))  # nothing read back yet
    with pytest.raises(NonFiniteLossError, match=r"training loss is nan on batch \[a b.png, ü"):
        module.check_losses()
    module.check_losses()  # reported once
    module.training_step(_batch(float("inf")), 0)
    with pytest.raises(NonFiniteLossError):
        module.on_save_checkpoint({})  # a checkpoint is never written over an unchecked bad step
    with pytest.raises(ValueError, match="nan_policy"):
        _module("ignore")


class _NanAtStep(ChangeDetectionModule):
    """A non-finite loss at global step ``bad_step`` (the batch's file names are 'i.png')."""

    bad_step = 2

    def task_loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        loss, logits = super().task_loss(batch)
        if self.global_step == self.bad_step:
            loss = loss * float("nan")
        return loss, logits


def _fit_with_a_bad_step(
    policy: str, module_class: type[_NanAtStep] = _NanAtStep, steps: int = 6
) -> _NanAtStep:
    import lightning as L

    def item(i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        image = torch.randn(3, 32, 32, generator=g)
        mask = (torch.rand(32, 32, generator=g) > 0.5).long()
        return {"image1": image, "image2": image.flip(-1), "mask": mask, "name": f"{i}.png"}

    torch.manual_seed(0)
    module = module_class("fc_ef", nan_policy=policy, max_steps=steps, warmup_steps=1)
    loader = torch.utils.data.DataLoader([item(i) for i in range(2 * steps)], batch_size=2)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        limit_val_batches=0,
        log_every_n_steps=4,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, loader)
    assert trainer.global_step == steps
    return module


def test_stop_names_the_bad_step_and_its_files_at_the_next_check() -> None:
    pattern = r"^step 2: training loss is nan on batch \[4\.png, 5\.png\]"
    with pytest.raises(NonFiniteLossError, match=pattern):
        _fit_with_a_bad_step("stop")


def test_skip_gives_the_bad_step_no_gradient_and_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    zero_gradients: list[bool] = []

    class Spy(_NanAtStep):
        def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
            super().on_before_optimizer_step(optimizer)
            grads = [p.grad for p in self.parameters() if p.grad is not None]
            assert grads and all(bool(torch.isfinite(g).all()) for g in grads)
            zero_gradients.append(all(bool((g == 0).all()) for g in grads))

    with caplog.at_level("WARNING", logger="cdkd.training.module"):
        module = _fit_with_a_bad_step("skip", Spy)
    assert zero_gradients == [False, False, True, False, False, False]
    assert all(bool(torch.isfinite(p).all()) for p in module.parameters())
    skipped = [r.getMessage() for r in caplog.records if "step skipped" in r.getMessage()]
    assert skipped == ["step 2: loss is nan on batch [4.png, 5.png], step skipped"]


def test_skipping_steps_together_rules_out_gradient_accumulation() -> None:
    module = _module("skip")
    module._trainer = SimpleNamespace(world_size=2, accumulate_grad_batches=2)
    with pytest.raises(ConfigError, match="accumulate_grad_batches=1"):
        module.on_fit_start()
    module._trainer = SimpleNamespace(world_size=1, accumulate_grad_batches=2)
    module.on_fit_start()


class _Trainer:
    """Just what :class:`PreemptionCheckpoint` reads from a trainer."""

    def __init__(self, dirpath: Path) -> None:
        from lightning.pytorch.callbacks import ModelCheckpoint

        self.checkpoint_callback = ModelCheckpoint(dirpath=dirpath)
        self.global_step = 3
        self.saved: list[Path] = []

    def save_checkpoint(self, path: Path) -> None:
        self.saved.append(Path(path))


def test_only_sigterm_saves_a_checkpoint(tmp_path: Path) -> None:
    trainer = _Trainer(tmp_path)
    callback = PreemptionCheckpoint()
    callback.on_exception(trainer, None, NonFiniteLossError("nan"))  # type: ignore[arg-type]
    assert trainer.saved == []  # last.ckpt keeps the last good state
    callback.on_exception(trainer, None, SIGTERMException())  # type: ignore[arg-type]
    assert trainer.saved == [tmp_path / "last.ckpt"]


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    import random

    import numpy as np

    callback = RngStateCallback()
    torch.save({"rng": callback.state_dict()}, tmp_path / "c.ckpt")
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    state = torch.load(tmp_path / "c.ckpt", weights_only=True)["rng"]
    callback.load_state_dict(state)
    callback.on_train_start(None, None)  # type: ignore[arg-type]
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


_KILL_MID_WRITE = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    from lightning.fabric.plugins.io import torch_io
    from cdkd.training.callbacks import AtomicCheckpointIO

    def write_half_then_die(checkpoint, target, *args, **kwargs):
        fh = open(target, "wb") if isinstance(target, (str, os.PathLike)) else target
        fh.write(b"PK\\x03\\x04 half a checkpoint")
        fh.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    torch_io._atomic_save = write_half_then_die  # Lightning's own writer
    torch.save = write_half_then_die  # cdkd's, which writes straight into its file
    io = AtomicCheckpointIO() if sys.argv[2] == "atomic" else torch_io.TorchCheckpointIO()
    io.save_checkpoint({"step": 2, "w": torch.ones(3)}, sys.argv[1])
    """
)


@pytest.mark.parametrize("plugin", ["atomic", "plain"])
def test_kill_during_checkpoint_write(tmp_path: Path, plugin: str) -> None:
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1, "w": torch.zeros(3)}, path)
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_MID_WRITE, str(path), plugin], timeout=120, check=False
    )
    assert proc.returncode == -signal.SIGKILL
    if plugin == "plain":  # without the plugin the kill corrupts the checkpoint
        with pytest.raises(Exception):  # noqa: B017
            torch.load(path, weights_only=True)
        return
    assert torch.load(path, weights_only=True)["step"] == 1


def test_exception_during_checkpoint_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "best.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, path)
    with pytest.raises(Exception):  # noqa: B017
        io.save_checkpoint({"step": 2, "bad": lambda: None}, path)  # not picklable
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt"]


def _hparams(bucket: str | None, thresholds: list[float], std: float = 58.395) -> dict:
    return {
        "model": "fc_ef",
        "meta": {
            "bucket": bucket,
            "normalize": {"mean": [123.675, 116.28, 103.53], "std": [std, 57.12, 57.375]},
            "partition": {"name": "three", "thresholds": thresholds},
        },
    }


def check_recorded_setup(path: str, hparams: dict, *setup: list[float]) -> None:
    CheckpointMeta.from_hparams(hparams, path).check_evaluation(path, *setup)


def test_evaluation_refuses_another_partition_or_normalisation() -> None:
    mean, std = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
    check_recorded_setup("t.ckpt", _hparams("small", [0.05, 0.2]), [0.05, 0.2], mean, std)
    # a baseline does not depend on the partition (partition=two reuses it)
    check_recorded_setup("b.ckpt", _hparams(None, [0.05, 0.2]), [0.1], mean, std)
    with pytest.raises(CheckpointError, match=r"t.ckpt: trained with partition thresholds"):
        check_recorded_setup("t.ckpt", _hparams("small", [0.05, 0.2]), [0.1], mean, std)
    student = {**_hparams(None, [0.05, 0.2]), "distill_lambda": 1e-3}
    with pytest.raises(CheckpointError, match="force=true"):
        check_recorded_setup("s.ckpt", student, [0.1], mean, std)
    with pytest.raises(CheckpointError, match=r"b.ckpt: trained with normalisation"):
        check_recorded_setup("b.ckpt", _hparams(None, [0.05, 0.2], std=1.0), [0.1], mean, std)


def test_resume_modes(tmp_path: Path, config: Composer) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assert resume_checkpoint(config(), run_dir) is None  # nothing to resume: fresh
    with pytest.raises(ConfigError, match="resume=true but there is no checkpoint"):
        resume_checkpoint(config("resume=true"), run_dir)
    hparams = {"model": "tinycd"}
    torch.save({"hyper_parameters": hparams}, run_dir / "last.ckpt")
    torch.save({"hyper_parameters": hparams}, run_dir / "best.ckpt")
    (run_dir / "metrics.json").write_text("{}")
    assert resume_checkpoint(config("model=tinycd"), run_dir) == str(run_dir / "last.ckpt")
    with pytest.raises(CheckpointError, match="not 'fc_ef'"):
        resume_checkpoint(config("model=fc_ef"), run_dir)
    assert resume_checkpoint(config("resume=false"), run_dir) is None
    assert not (run_dir / "last.ckpt").exists() and not (run_dir / "best.ckpt").exists()
    (moved,) = (run_dir / "superseded").iterdir()
    assert sorted(p.name for p in moved.iterdir()) == ["best.ckpt", "last.ckpt", "metrics.json"]
    (run_dir / "last.ckpt").write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match="unreadable or truncated"):
        resume_checkpoint(config(), run_dir)


@pytest.mark.parametrize("content", ["{}", '{"split": "test", "per_image": {}}', "{trunc"])
def test_a_finished_run_with_an_unrecognised_summary_is_evaluated_again(
    tmp_path: Path, content: str
) -> None:
    last = tmp_path / "last.ckpt"
    torch.save({"global_step": 10}, last)
    (tmp_path / "metrics.json").write_text(content)
    schedule = Schedule(max_steps=10, warmup_steps=1, val_every=5)
    assert finished_run(tmp_path, str(last), schedule) is None
    summary = {"checkpoint": "best.ckpt", "val": {"per_image": {"mIoU": 0.5}}}
    (tmp_path / "metrics.json").write_text(json.dumps(summary))
    assert finished_run(tmp_path, str(last), schedule) == {
        "val/mIoU": 0.5,
        "skipped": True,
        "best_checkpoint": "best.ckpt",
    }
    assert finished_run(tmp_path, str(last), Schedule(11, 1, 5)) is None  # steps left


DDP_SCRIPT = """
import json, sys
import lightning as L
import torch
from cdkd.training.module import ChangeDetectionModule

class NanOnRankOne(ChangeDetectionModule):
    def task_loss(self, batch):
        loss, logits = super().task_loss(batch)
        if self.global_rank == 1 and self.trainer.fit_loop.total_batch_idx == 1:
            loss = loss * float("nan")
        return loss, logits

def item(i):
    g = torch.Generator().manual_seed(i)
    image = torch.randn(3, 32, 32, generator=g)
    return {"image1": image, "image2": image.flip(-1),
            "mask": (torch.rand(32, 32, generator=g) > 0.5).long(), "name": f"{i}.png"}

L.seed_everything(0, verbose=False)
module = NanOnRankOne("fc_ef", nan_policy=sys.argv[1], max_steps=3, warmup_steps=1)
loader = torch.utils.data.DataLoader([item(i) for i in range(16)], batch_size=2)
trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=3,
                    limit_val_batches=0, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False)
trainer.fit(module, loader)
total = sum(float(p.double().sum()) for p in module.parameters())
with open(f"rank{trainer.global_rank}.json", "w") as out:
    json.dump({"step": trainer.global_step, "batches": trainer.fit_loop.total_batch_idx + 1,
               "sum": total}, out)
"""


# Two DDP processes (~25 s each, slow): the single-process nan_policy tests above run by default,
# and tests/system/test_multigpu.py keeps a two-process DDP run in the default suite.
@pytest.mark.slow
@pytest.mark.parametrize("policy", ["skip", "stop"])
def test_a_non_finite_loss_on_one_ddp_process_is_decided_by_all(
    tmp_path: Path, policy: str
) -> None:
    script = tmp_path / "nan_ddp.py"
    script.write_text(DDP_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), policy],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,  # a process left waiting for the other's gradients would hang until here
    )
    if policy == "stop":
        assert proc.returncode != 0
        assert "training loss is nan on batch" in proc.stderr
        assert "training loss is not finite on another process" in proc.stderr
        return
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "loss is nan on batch" in proc.stderr
    assert "loss is not finite on another process, step skipped" in proc.stderr
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert all(r["step"] == 3 and r["batches"] == 3 for r in ranks)
    assert ranks[0]["sum"] == ranks[1]["sum"]  # the processes stayed in step
