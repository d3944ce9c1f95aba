"""Learning-rate schedule, task losses, parameter groups and the progress bar."""

import math
from pathlib import Path
from typing import get_args

import pytest
import torch
import torch.nn.functional as F

from cdkd.errors import ConfigError
from cdkd.training.losses import LOSSES, LossKind, TaskLoss, build_loss
from cdkd.training.schedule import resolve_schedule, trainer_overrides, warmup_decay
from tests.factories import Composer


def test_warmup_starts_at_absolute_lr_and_decays_to_zero() -> None:
    lr = 1e-3
    f = warmup_decay(lr, max_steps=1000, warmup_steps=100, warmup_start_lr=1e-6)
    assert f(0) * lr == pytest.approx(1e-6)
    assert f(50) * lr == pytest.approx(1e-6 + (lr - 1e-6) * 0.5)
    assert f(100) == pytest.approx(1.0)
    assert f(550) == pytest.approx(0.5)
    assert f(1000) == 0.0
    assert f(5000) == 0.0


def test_cosine_decay_halfway() -> None:
    f = warmup_decay(1e-3, max_steps=300, warmup_steps=100, decay="cosine")
    assert f(200) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(300) == pytest.approx(0.0)


def test_every_loss_kind_has_a_channel_count() -> None:
    assert tuple(LOSSES) == get_args(LossKind)
    for kind in LOSSES:
        assert build_loss(kind).out_channels == build_loss({"kind": kind}).out_channels


def test_ce_loss_ignores_padding_and_resizes() -> None:
    logits = torch.randn(2, 2, 4, 4)
    mask = torch.randint(0, 2, (2, 8, 8))
    mask[:, :4] = 255
    up = F.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=False)
    valid_mean = F.cross_entropy(up[:, :, 4:], mask[:, 4:])
    # The official default (mmseg's avg_non_ignore=False): the valid pixels' loss summed and
    # divided by every label pixel, here twice as many as the valid ones.
    assert TaskLoss("ce")(logits, mask).item() == pytest.approx(valid_mean.item() / 2, rel=1e-5)
    loss = TaskLoss("ce", average="valid")(logits, mask)
    assert loss.item() == pytest.approx(valid_mean.item(), rel=1e-5)


def test_bce_loss_averages_over_all_or_valid_pixels() -> None:
    logits = torch.zeros(1, 1, 2, 2)
    mask = torch.tensor([[[1, 0], [255, 255]]])
    assert TaskLoss("bce")(logits, mask).item() == pytest.approx(math.log(2) / 2)
    assert TaskLoss("bce", average="valid")(logits, mask).item() == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="unknown loss average 'median'"):
        TaskLoss("bce", average="median")


def test_bce_dice_default_is_mmseg_dice_on_a_one_channel_head() -> None:
    logits = torch.zeros(2, 1, 2, 2)  # p = 0.5 everywhere
    mask = torch.tensor([[[1, 0], [255, 0]], [[1, 1], [1, 1]]])
    # mmseg compares P(change) with the *unchanged* pixels (ignore counts as not unchanged),
    # per image: image 1 has sum(p t) = 1, sum(p^2) = 1, sum(t^2) = 2; image 2 has no
    # unchanged pixel, so its Dice is 0.
    first = 1 - 2 * 1 / (1 + 1e-3 + 2 + 1e-3)
    expected = math.log(2) * 7 / 8 + (first + 1.0) / 2  # BCE over all 8 label pixels
    assert TaskLoss("bce_dice")(logits, mask).item() == pytest.approx(expected, rel=1e-6)
    assert TaskLoss("bce_dice", dice="mmseg")(logits, mask).item() == pytest.approx(expected)


def test_bce_dice_binary_option_is_the_changed_class_dice_over_valid_pixels() -> None:
    logits = torch.zeros(1, 1, 2, 2)
    mask = torch.tensor([[[1, 0], [255, 0]]])
    # Valid pixels: p sums to 1.5, the changed target to 1, their product to 0.5; smoothed by 1.
    expected = math.log(2) + 1 - (2 * 0.5 + 1) / (1.5 + 1 + 1)
    loss = TaskLoss("bce_dice", dice="binary", average="valid")(logits, mask)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="unknown Dice term 'jaccard'"):
        TaskLoss("bce_dice", dice="jaccard")


def test_farseg_config_uses_the_official_dice_for_both_directions(
    compose_config: Composer,
) -> None:
    default = compose_config("train", "model=changestar_farseg")
    binary = compose_config("train", "model=changestar_farseg", "model.loss.dice=binary")
    assert default.model.loss == {"kind": "bce_dice", "dice": "mmseg"}
    assert default.model.aux_loss == default.model.loss
    assert binary.model.aux_loss.dice == "binary"


def test_parameter_groups_apply_lr_multipliers_and_no_decay() -> None:
    from torch import nn

    from cdkd.training.module import parameter_groups

    net = nn.ModuleDict(
        {"backbone": nn.Linear(2, 2), "norm": nn.LayerNorm(2), "decode_head": nn.Linear(2, 1)}
    )
    net["backbone"].bias.requires_grad_(False)
    opt = {"lr": 1e-4, "weight_decay": 0.01, "lr_mult": {"decode_head": 10}, "no_decay": ["norm"]}
    groups = parameter_groups(net, opt)
    by_id = {id(p): g for g in groups for p in g["params"]}
    assert by_id[id(net["decode_head"].weight)]["lr"] == pytest.approx(1e-3)
    assert by_id[id(net["norm"].weight)]["weight_decay"] == 0.0
    assert by_id[id(net["backbone"].weight)] == {
        "params": by_id[id(net["backbone"].weight)]["params"],
        "lr": 1e-4,
        "weight_decay": 0.01,
    }
    assert id(net["backbone"].bias) not in by_id  # frozen: no optimizer state


class _FakeData:
    """Stands in for a datamodule with 488 training batches (JL1-CD: 3900 pairs / 8)."""

    def setup(self, stage: str) -> None:
        self.stage = stage

    def train_batches(self, world_size: int = 1) -> int:
        return 488


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model=ttp_sam_l", "data=jl1cd"], (300 * 488, 5 * 488, 5 * 488)),
        (["model=ttp_sam_l", "data=jl1cd", "stage=student"], (100 * 488, 5 * 488, 5 * 488)),
        (["model=ttp_sam_l"], (300, 30, 100)),  # the short synthetic schedule keeps its steps
        (["model=tinycd", "data=jl1cd", "stage=student"], (100_000, 1000, 1000)),
    ],
)
def test_schedule_in_steps_or_model_epochs(
    compose_config: Composer, overrides: list[str], expected: tuple
) -> None:
    schedule = resolve_schedule(compose_config("train", *overrides), _FakeData())
    assert (schedule.max_steps, schedule.warmup_steps, schedule.val_every) == expected


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        # Steps replace the schedule's; the warm-up keeps its steps (the LR curve cuts it).
        (["trainer.max_steps=2"], (2, 30, 100)),
        (["data=jl1cd", "stage=student", "trainer.max_steps=5000"], (5000, 1000, 1000)),
        (["model=ttp_sam_l", "data=jl1cd", "trainer.max_steps=100"], (100, 5 * 488, 5 * 488)),
        # Epochs count the training batches of an epoch; with max_steps the earlier end wins.
        (["data=jl1cd", "trainer.max_epochs=3"], (3 * 488, 1000, 1000)),
        (["data=jl1cd", "trainer.max_epochs=3", "trainer.max_steps=1000"], (1000, 1000, 1000)),
        (["data=jl1cd", "trainer.max_epochs=3", "trainer.max_steps=5000"], (3 * 488, 1000, 1000)),
        (["model=ttp_sam_l", "data=jl1cd", "trainer.max_epochs=2"], (2 * 488, 5 * 488, 5 * 488)),
        # An integer interval counts optimizer steps, a float is a fraction of an epoch.
        (["data=jl1cd", "trainer.val_check_interval=250"], (200_000, 1000, 250)),
        (["data=jl1cd", "trainer.val_check_interval=0.5"], (200_000, 1000, 244)),
        (["trainer.val_check_interval=1.0", "trainer.max_steps=10"], (10, 30, 488)),
    ],
)
def test_lightning_keys_override_the_schedule(
    compose_config: Composer, overrides: list[str], expected: tuple
) -> None:
    schedule = resolve_schedule(compose_config("train", *overrides), _FakeData())
    assert (schedule.max_steps, schedule.warmup_steps, schedule.val_every) == expected


def test_step_overrides_read_no_data(compose_config: Composer) -> None:
    data = _FakeData()
    assert resolve_schedule(compose_config("train", "trainer.max_steps=7"), data).max_steps == 7
    assert not hasattr(data, "stage")  # no epoch to count: the splits were not set up


@pytest.mark.parametrize(
    "override",
    [
        "trainer.max_steps=0",
        "trainer.max_steps=-1",
        "trainer.max_steps=2.5",
        "trainer.max_steps=true",
        "trainer.max_epochs=0",
        "trainer.val_check_interval=0",
        "trainer.val_check_interval=1.5",
        "trainer.val_check_interval=often",
    ],
)
def test_bad_lightning_keys_fail_with_one_line(compose_config: Composer, override: str) -> None:
    with pytest.raises(ConfigError) as err:
        trainer_overrides(compose_config("train", override))
    key = override.split("=")[0]
    assert str(err.value).startswith(f"{key} = ") and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "steps"),
    [
        (["trainer.max_steps=2"], 2),
        # The run ends between validations: the last step is validated and saved all the same.
        (["trainer.max_steps=5", "schedule.val_every=3"], 5),
        # 30 pairs in batches of 10; validated (and so checkpointed) at the epoch's end.
        (["trainer.max_epochs=1", "trainer.val_check_interval=1.0", "data.batch_size=10"], 3),
    ],
)
def test_lightning_keys_end_a_smoke_run(
    tmp_path: Path, compose_config: Composer, overrides: list[str], steps: int
) -> None:
    from cdkd.training.run import train

    train(
        compose_config(
            "train",
            "experiment=smoke",
            "model=fc_ef",
            "logger=none",
            "test_after_fit=false",
            *overrides,
        )
    )
    (last,) = (tmp_path / "runs").rglob("last.ckpt")
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == steps
    assert ckpt["hyper_parameters"]["max_steps"] == steps  # the LR reaches 0 there


def test_channels_last_module_gives_the_same_loss() -> None:
    from cdkd.training.module import ChangeDetectionModule

    torch.manual_seed(0)
    plain = ChangeDetectionModule(model="fc_siam_diff", channels_last=False).eval()
    fast = ChangeDetectionModule(model="fc_siam_diff", channels_last=True).eval()
    fast.load_state_dict(plain.state_dict())
    fast.on_fit_start()
    conv = next(m for m in fast.net.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    batch = {
        "image1": torch.randn(2, 3, 32, 32),
        "image2": torch.randn(2, 3, 32, 32),
        "mask": torch.randint(0, 2, (2, 32, 32)),
    }
    moved = fast.on_after_batch_transfer(dict(batch), 0)
    assert moved["image1"].is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert fast.task_loss(moved)[0].item() == pytest.approx(plain.task_loss(batch)[0].item())


def test_progress_bar_counts_steps_towards_the_end_of_the_schedule() -> None:
    from types import SimpleNamespace

    from cdkd.training.progress import StepProgressBar

    bar = StepProgressBar()
    bar._trainer = SimpleNamespace(global_step=2800, max_steps=4000, max_epochs=-1)
    assert bar._get_train_description(14).strip() == "step 2800/4000 (epoch 14)"
    bar._trainer = SimpleNamespace(global_step=3, max_steps=-1, max_epochs=None)
    assert bar._get_train_description(0).strip() == "step 3 (epoch 0)"
