"""Distillation losses (``distill.loss``) and routings (``distill.routing``) beyond the paper's."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from cdkd.errors import ConfigError
from cdkd.training.checks import check_config
from cdkd.training.distill import DistillationModule, align_logits
from cdkd.training.distill_losses import distill_loss
from cdkd.training.routing import Routing, plan, route, teacher_weights
from tests.factories import THREE, Composer, save_checkpoint, save_teachers

SIZE = 32


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def maps(values: list[list[float]]) -> torch.Tensor:
    """``[1, C, 2, 2]`` from C lists of the 4 pixel values (row-major)."""
    return torch.tensor(values, dtype=torch.float32).view(1, len(values), 2, 2)


# ---------------------------------------------------------------- losses, by hand on 2x2 maps


def test_mse_is_the_mean_squared_logit_difference() -> None:
    s, t = maps([[0, 1, 2, 3]]), maps([[1, 1, 0, 3]])
    assert distill_loss("mse", s, t).item() == pytest.approx((1 + 0 + 4 + 0) / 4)


def test_kl_of_a_one_channel_head_uses_the_two_class_distribution() -> None:
    # student p = 0.5 everywhere, teacher p = 0.75 on one pixel and 0.5 on the others
    s, t = maps([[0, 0, 0, 0]]), maps([[logit(0.75), 0, 0, 0]])
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert distill_loss("kl", s, t).item() == pytest.approx(kl / 4, rel=1e-5)


def test_kl_of_a_two_channel_head_with_temperature() -> None:
    s = maps([[0, 0, 0, 0], [0, 0, 0, 2]])  # the last pixel: logits (0, 2)
    t = maps([[0, 0, 0, 0], [0, 0, 0, -2]])
    T = 2.0
    # at T = 2 the last pixel is softmax(0, 1) for the student, softmax(0, -1) for the teacher
    q_s = [1 / (1 + math.e), math.e / (1 + math.e)]
    q_t = [q_s[1], q_s[0]]
    kl = sum(qt * math.log(qt / qs) for qt, qs in zip(q_t, q_s, strict=True))
    assert distill_loss("kl", s, t, temperature=T).item() == pytest.approx(T**2 * kl / 4, rel=1e-5)


def test_kl_is_zero_for_the_teacher_itself() -> None:
    t = maps([[1, -2, 0.5, 3], [0, 1, 1, -1]])
    assert distill_loss("kl", t, t).item() == pytest.approx(0.0, abs=1e-7)


def test_cwd_of_a_one_channel_head_is_a_spatial_kl_of_its_log_odds() -> None:
    # student: uniform over the 4 positions; teacher: softmax(0, 0, 0, ln 5) = (1, 1, 1, 5) / 8
    s, t = maps([[0, 0, 0, 0]]), maps([[0, 0, 0, math.log(5)]])
    kl = 3 * (1 / 8) * math.log((1 / 8) / (1 / 4)) + (5 / 8) * math.log((5 / 8) / (1 / 4))
    assert distill_loss("cwd", s, t).item() == pytest.approx(kl, rel=1e-5)


def test_cwd_averages_channels_and_scales_by_t_squared() -> None:
    # channel 0 as above (at T = 2 the teacher's ln 25 becomes ln 5); channel 1 identical (0)
    s = maps([[0, 0, 0, 0], [1, 2, 3, 4]])
    t = maps([[0, 0, 0, 2 * math.log(5)], [1, 2, 3, 4]])
    kl = 3 * (1 / 8) * math.log(0.5) + (5 / 8) * math.log(2.5)
    assert distill_loss("cwd", s, t, temperature=2.0).item() == pytest.approx(4 * kl / 2, rel=1e-5)


def test_dist_of_a_one_channel_head_on_opposite_probabilities() -> None:
    # p_s = (.2, .4, .6, .8), p_t = (.8, .6, .4, .2): every pixel's [1-p, p] is anti-correlated
    # with the teacher's (inter = 1 - (-1) = 2), and so is each class across the pixels (intra
    # = 2); loss = beta * 2 + gamma * 2.
    p = [0.2, 0.4, 0.6, 0.8]
    s, t = maps([[logit(v) for v in p]]), maps([[logit(v) for v in reversed(p)]])
    loss = distill_loss("dist", s, t, beta=1.0, gamma=0.5)
    assert loss.item() == pytest.approx(2 * 1.0 + 2 * 0.5, rel=1e-5)


def test_dist_of_a_two_channel_head_by_hand() -> None:
    # 3 classes on 2x2 pixels; inter/intra computed with plain Python Pearson correlations
    s = maps([[0, 1, 2, 0], [1, 0, 0, 2], [2, 2, 1, 1]])
    t = maps([[1, 1, 0, 0], [0, 2, 1, 1], [0, 0, 2, 1]])

    def probs(x: torch.Tensor) -> list[list[float]]:  # [pixel][class]
        rows = x[0].flatten(1).t().tolist()
        return [[math.exp(v) / sum(math.exp(u) for u in row) for v in row] for row in rows]

    def pearson(a: list[float], b: list[float]) -> float:
        ma, mb = sum(a) / len(a), sum(b) / len(b)
        num = sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True))
        den = math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b))
        return num / den

    ps, pt = probs(s), probs(t)
    inter = sum(1 - pearson(ps[i], pt[i]) for i in range(4)) / 4
    intra = sum(1 - pearson([r[c] for r in ps], [r[c] for r in pt]) for c in range(3)) / 3
    assert distill_loss("dist", s, t).item() == pytest.approx(inter + intra, rel=1e-5)


# ---------------------------------------------------------------- routing around thresholds

# Thresholds and width exact in binary: th = 0.25, 0.5; width 0.125.
TH, WIDTH = (0.25, 0.5), 0.125
CARS = [0.0625, 0.125, 0.1875, 0.25, 0.3125, 0.375, 0.5, 0.625, 0.9]
SOFT = [
    [1, 0, 0],  # outside any width: its bucket
    [1, 0, 0],  # th - width: the lower teacher alone
    [0.75, 0.25, 0],  # halfway into the width below th
    [0.5, 0.5, 0],  # exactly on th (car routes it lower)
    [0.25, 0.75, 0],  # halfway into the width above th
    [0, 1, 0],  # th + width: the upper teacher alone
    [0, 0.5, 0.5],  # exactly on the second threshold
    [0, 0, 1],  # th2 + width
    [0, 0, 1],
]


def weights(routing: Routing, **kw: Any) -> torch.Tensor:
    return teacher_weights(torch.tensor(CARS), TH, routing, soft_width=WIDTH, **kw)


def test_soft_weights_at_and_around_the_thresholds() -> None:
    assert torch.equal(weights("soft"), torch.tensor(SOFT))


def test_car_weights_are_the_hard_buckets() -> None:
    buckets = [0, 0, 0, 0, 1, 1, 1, 2, 2]  # CAR <= th is the lower bucket
    assert torch.equal(weights("car"), F.one_hot(torch.tensor(buckets), 3).float())


def test_ensemble_weights_fade_with_the_distance_to_each_bucket() -> None:
    tau = 0.1
    w = weights("ensemble", ensemble_tau=tau)
    assert torch.allclose(w.sum(1), torch.ones(len(CARS)))
    assert bool((w > 0).all())
    # CAR 0.125 lies in bucket 0: distances (0, 0.125, 0.375) to the three CAR intervals
    raw = [math.exp(-d / tau) for d in (0, 0.125, 0.375)]
    assert w[1].tolist() == pytest.approx([r / sum(raw) for r in raw], rel=1e-5)
    # on a threshold both neighbours weigh the same
    assert w[3, 0].item() == pytest.approx(w[3, 1].item())


def masks_with_cars(changed: list[int]) -> torch.Tensor:
    mask = torch.zeros(len(changed), SIZE, SIZE, dtype=torch.long)
    for i, n in enumerate(changed):
        mask[i].view(-1)[:n] = 1
    return mask


# 1024 pixels against THREE (0.05, 0.2) with width 0.02: 0 -> small; 52 (0.051) -> small and
# medium; 150 (0.146) -> medium; 205 (0.2002) -> medium and large; 600 -> large.
CHANGED = [205, 0, 52, 150, 600]


def test_soft_plan_lists_each_teacher_s_samples_with_their_weights() -> None:
    order, counts, w = plan(masks_with_cars(CHANGED), THREE["thresholds"], "soft")
    assert counts == [2, 3, 2]
    assert order.tolist() == [1, 2, 0, 2, 3, 0, 4]
    assert w is not None
    car = [n / 1024 for n in CHANGED]
    w_small = 0.5 - (car[2] - 0.05) / 0.04
    w_medium = 0.5 - (car[0] - 0.2) / 0.04
    expected = [1, w_small, w_medium, 1 - w_small, 1, 1 - w_medium, 1]
    assert w.tolist() == pytest.approx(expected, rel=1e-5)


def test_car_and_single_plans() -> None:
    mask = masks_with_cars(CHANGED)
    order, counts, w = plan(mask, THREE["thresholds"], "car")
    car_order, car_counts = route(mask, THREE["thresholds"])
    assert (order.tolist(), counts, w) == (car_order.tolist(), car_counts, None)
    order, counts, w = plan(mask, THREE["thresholds"], "single")
    assert (order.tolist(), counts, w) == ([0, 1, 2, 3, 4], [5], None)


# ---------------------------------------------------------------- the student module


@pytest.fixture
def checkpoints(tmp_path: Path) -> dict[str, Any]:
    origin = save_checkpoint(tmp_path / "origin.ckpt", "fc_siam_diff", None, THREE, 0)
    teachers = save_teachers(tmp_path, "fc_siam_diff")
    return {"origin": str(origin), "teachers": teachers}


def student(ckpts: dict[str, Any], **kw: Any) -> DistillationModule:
    options: dict[str, Any] = {
        "init": ckpts["origin"],
        "teachers": ckpts["teachers"],
        "distill_lambda": 1.0,
        "partition": THREE,
        "model": "fc_siam_diff",
        "loss": "ce",
    }
    return DistillationModule(**{**options, **kw})


def batch_for(changed: list[int]) -> dict[str, Any]:
    torch.manual_seed(123)
    n = len(changed)
    return {
        "image1": torch.randn(n, 3, SIZE, SIZE),
        "image2": torch.randn(n, 3, SIZE, SIZE),
        "mask": masks_with_cars(changed),
    }


@pytest.mark.parametrize(
    ("routing", "served"),
    [
        ("soft", [[1, 2], [0, 2, 3], [0, 4]]),
        ("ensemble", [[0, 1, 2, 3, 4]] * 3),
        ("car", [[1], [2, 3], [0, 4]]),
    ],
)
def test_each_teacher_runs_once_on_the_samples_it_serves(
    checkpoints: dict[str, Any], routing: str, served: list[list[int]]
) -> None:
    module = student(checkpoints, routing=routing)
    batch = batch_for(CHANGED)
    seen: list[list[torch.Tensor]] = [[] for _ in module.teachers]
    for k, teacher in enumerate(module.teachers):
        teacher.register_forward_hook(lambda m, args, out, k=k: seen[k].append(args[0]))
    module.distillation_loss(batch, module.net(batch["image1"], batch["image2"]))
    for k, samples in enumerate(served):
        assert len(seen[k]) == 1, f"teacher {k} ran {len(seen[k])} times"
        assert torch.equal(seen[k][0], batch["image1"][samples])


def test_soft_target_is_the_weighted_blend_of_the_teachers(checkpoints: dict[str, Any]) -> None:
    module = student(checkpoints, routing="soft")
    batch = batch_for(CHANGED)
    logits = module.net(batch["image1"], batch["image2"])
    car = torch.tensor([n / 1024 for n in CHANGED])
    w = teacher_weights(car, THREE["thresholds"], "soft")
    with torch.no_grad():
        outputs = [t(batch["image1"], batch["image2"]) for t in module.teachers]
    target = sum(w[:, k].view(-1, 1, 1, 1) * outputs[k] for k in range(3))
    loss = module.distillation_loss(batch, logits)
    assert loss.item() == pytest.approx(F.mse_loss(logits, target).item(), rel=1e-5)
    loss.backward()


def test_single_teacher_runs_once_on_every_sample(checkpoints: dict[str, Any]) -> None:
    module = student(checkpoints, routing="single", teachers={"all": checkpoints["origin"]})
    batch = batch_for(CHANGED)
    calls: list[torch.Tensor] = []
    module.teachers[0].register_forward_hook(lambda m, args, out: calls.append(args[0]))
    module.eval()  # the student's forward as the (eval-mode) teacher's
    logits = module.net(batch["image1"], batch["image2"])
    loss = module.distillation_loss(batch, logits)
    assert len(module.teachers) == 1 and len(calls) == 1
    assert torch.equal(calls[0], batch["image1"])
    # self-distillation from M_O, which the student starts from: nothing to learn yet
    assert loss.item() == pytest.approx(0.0, abs=1e-10)


def old_distillation_loss(module: DistillationModule, batch: dict[str, Any]) -> torch.Tensor:
    """The loss before ``distill.loss`` / ``distill.routing`` existed, verbatim in effect."""
    order, counts = route(batch["mask"], module.scheme.thresholds)
    logits = module.net(batch["image1"], batch["image2"])
    parts_s, parts_t = [], []
    for k, idx in enumerate(torch.split(order, counts)):
        if counts[k] == 0:
            continue
        with torch.inference_mode():
            target = module.teachers[k](batch["image1"][idx], batch["image2"][idx])
        s, t = align_logits(logits[idx], target.clone(), module.net, module.teachers[k])
        parts_s.append(s)
        parts_t.append(t)
    return F.mse_loss(torch.cat(parts_s).float(), torch.cat(parts_t).float())


def test_default_mse_car_reproduces_the_previous_student_exactly(
    checkpoints: dict[str, Any],
) -> None:
    def steps(new: bool) -> dict[str, torch.Tensor]:
        module = student(checkpoints)
        module.eval()  # no dropout: both runs see the same forward
        optimizer = torch.optim.SGD(module.net.parameters(), lr=0.1)
        for step in range(2):
            batch = batch_for([*[0, 52, 205, 600][step:], 150])
            optimizer.zero_grad()
            if new:
                logits = module.net(batch["image1"], batch["image2"])
                loss = module.distillation_loss(batch, logits)
            else:
                loss = old_distillation_loss(module, batch)
            loss.backward()
            optimizer.step()
        return {k: v.clone() for k, v in module.net.state_dict().items()}

    new, old = steps(True), steps(False)
    assert all(torch.equal(new[k], old[k]) for k in old)
    assert any(not torch.equal(old[k], v) for k, v in student(checkpoints).net.state_dict().items())


# ---------------------------------------------------------------- configuration and training


def test_bad_loss_and_routing_are_one_line_config_errors(compose_config: Composer) -> None:
    for override, message in (
        ("distill.loss=l1", "distill.loss 'l1' must be one of"),
        ("distill.routing=random", "distill.routing 'random' must be one of"),
        ("distill.temperature=0", "distill.temperature = 0.0 must be > 0"),
        ("distill.routing=single", r"routing=single takes distill.teachers=\{all: PATH\}"),
    ):
        cfg = compose_config("train", "experiment=smoke", "stage=student", override)
        with pytest.raises(ConfigError, match=message):
            check_config(cfg)


@pytest.mark.parametrize(
    "options",
    [
        ["distill.loss=cwd", "distill.routing=soft"],
        ["distill.loss=dist", "distill.routing=single", "distill.single_teacher=init"],
    ],
)
def test_student_trains_with_other_losses_and_routings(
    tmp_path: Path, compose_config: Composer, options: list[str]
) -> None:
    from cdkd.training.run import train

    origin = save_checkpoint(tmp_path / "origin.ckpt", "fc_ef")
    teachers = ", ".join(f"{b}: '{p}'" for b, p in save_teachers(tmp_path, "fc_ef").items())
    if "distill.routing=soft" in options:
        options = [*options, f"distill.teachers={{{teachers}}}"]
    cfg = compose_config(
        "train",
        "experiment=smoke",
        "model=fc_ef",
        "stage=student",
        "logger=none",
        "test_after_fit=false",
        "data.synthetic.counts={train: 8, val: 4, test: 4}",
        "schedule.distill_max_steps=2",
        "schedule.val_every=2",
        "schedule.warmup_steps=1",
        f"distill.init={origin}",
        *options,
    )
    results = train(cfg)
    assert math.isfinite(results["val/mIoU"])
    hparams = torch.load(results["best_checkpoint"], map_location="cpu", weights_only=False)[
        "hyper_parameters"
    ]
    loss, routing = (o.split("=")[1] for o in options[:2])
    assert (hparams["distill_loss"], hparams["routing"]) == (loss, routing)


def test_student_recorded_before_these_options_still_resumes(compose_config: Composer) -> None:
    from omegaconf import OmegaConf

    from cdkd.training.build import DISTILL_OPTIONS
    from cdkd.training.resume import recipe_differences

    current = OmegaConf.to_container(compose_config("train", "stage=student"))
    assert isinstance(current, dict)
    recorded = {**current, "distill": dict(current["distill"])}
    for key in [*DISTILL_OPTIONS, "single_teacher"]:
        del recorded["distill"][key]
    assert recipe_differences(recorded, current) == []
    changed = OmegaConf.to_container(compose_config("train", "stage=student", "distill.loss=kl"))
    assert isinstance(changed, dict)
    assert recipe_differences(recorded, changed) == ['distill.loss: null -> "kl"']
