"""What every model of the zoo must do, checked for each registered name.

Model-specific behaviour is tested next to each model; this file holds the shared contract:
the Table II size, a config whose loss fits the head, a forward/backward pass at a small size
with finite gradients, a student step with a teacher of the same model and one of another
model, and a config that composes with every stage. The cross-architecture cases of most
models are ``slow`` (``make test-all``); the default suite keeps one per kind of head.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from cdkd.config import model_config
from cdkd.models import create_model, get_entry, list_models
from cdkd.models.complexity import count_parameters
from cdkd.training.distill import DistillationModule
from cdkd.training.losses import build_loss
from cdkd.training.module import ChangeDetectionModule
from tests.factories import TWO, Composer, save_checkpoint, save_teachers

MODELS = list_models()
STAGES = ("baseline", "teacher_s", "teacher_m", "teacher_l", "student")
#: Image side of the small forward/backward and student tests.
SIZE = 64
SLOW = pytest.mark.slow


def module_kwargs(name: str) -> dict[str, Any]:
    """The LightningModule arguments the model's config implies (loss and auxiliary heads)."""
    conf = OmegaConf.to_container(model_config(name), resolve=True)
    return {
        "loss": conf["loss"],
        "aux_weights": conf.get("aux_weights") or [],
        "aux_loss": conf.get("aux_loss"),
        "model_kwargs": {**conf["kwargs"], **get_entry(name).info.test_overrides},
    }


def batch(size: int = SIZE, n: int = 3) -> dict[str, Any]:
    torch.manual_seed(0)
    mask = torch.zeros(n, size, size, dtype=torch.long)
    for i, fraction in enumerate((0.0, 0.1, 0.6)[:n]):
        mask[i].view(-1)[: int(fraction * size * size)] = 1
    return {
        "image1": torch.randn(n, 3, size, size),
        "image2": torch.randn(n, 3, size, size),
        "mask": mask,
    }


@pytest.mark.parametrize("name", MODELS)
def test_size_matches_table_ii(name: str) -> None:
    info = get_entry(name).info
    assert info is not None, f"{name} has no ModelInfo"
    params = count_parameters(create_model(name)) / 1e6
    assert abs(params - info.paper_params) <= 0.005 * info.paper_params, (name, params)


@pytest.mark.parametrize("name", MODELS)
def test_config_matches_the_model(name: str) -> None:
    conf = model_config(name)
    assert conf.name == name
    for key in ("optimizer", "scheduler", "batch_size", "distill_lambda", "normalize", "augment"):
        assert key in conf, f"conf/model/{name}.yaml lacks {key}"
    assert conf.scheduler in ("linear", "cosine")
    assert (
        build_loss(OmegaConf.to_container(conf).get("loss")).out_channels
        == get_entry(name).cls.out_channels
    )


@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_at_small_size(name: str) -> None:
    module = ChangeDetectionModule(model=name, **module_kwargs(name)).train()
    data = batch()
    loss, logits = module.task_loss(data)
    assert logits.shape[:2] == (3, module.net.out_channels)
    assert SIZE % logits.shape[-1] == 0 and logits.shape[-1] == logits.shape[-2]
    loss.backward()
    grads = [p.grad for p in module.net.parameters() if p.requires_grad]
    assert torch.isfinite(loss)
    assert sum(g is not None for g in grads) >= 0.8 * len(grads)
    assert all(torch.isfinite(g).all() for g in grads if g is not None)
    with torch.no_grad():
        assert module.net.eval().predict(logits).dtype == torch.bool


#: Students that the default suite also distils from another architecture's teachers: each
#: kind of head (1- and 2-channel, full and reduced resolution, metric, auxiliary outputs,
#: frozen foundation encoder); the other models' cross-architecture steps are ``slow``.
CROSS_DEFAULT = {"tinycd", "fc_siam_diff", "changer_b0", "changeformer_b0", "stanet_base"}
CROSS_DEFAULT |= {"lightcdnet_s", "ban_vit_b"}
#: The three largest CNNs' own student steps (5-8 s each) are ``slow`` too; their forward and
#: backward pass stays in the default suite.
HEAVY = {"cgnet", "changer_s50", "ifn"}
STUDENT_CASES = [
    pytest.param(
        teacher,
        name,
        marks=[SLOW] if name in HEAVY or (teacher == "other" and name not in CROSS_DEFAULT) else [],
    )
    for teacher in ("same", "other")
    for name in MODELS
]


@pytest.mark.parametrize(("teacher", "name"), STUDENT_CASES)
def test_student_step(name: str, teacher: str, tmp_path: Path) -> None:
    # Two teachers (the paper's Table V setting) keep this cheap for the large models; the
    # three-teacher routing itself is tested in test_distill.py.
    kwargs = module_kwargs(name)
    teacher_model = name if teacher == "same" else ("tinycd" if name != "tinycd" else "fc_ef")
    teacher_kwargs = kwargs if teacher == "same" else {}
    init = save_checkpoint(tmp_path / "origin.ckpt", name, partition=TWO, **kwargs)
    teachers = save_teachers(tmp_path, teacher_model, partition=TWO, **teacher_kwargs)
    student = DistillationModule(
        init=str(init),
        teachers=teachers,
        distill_lambda=1.0,
        partition=TWO,
        teacher_model=teacher_model,
        model=name,
        **kwargs,
    ).train()
    data = batch()
    loss = student.training_step(data, 0)
    loss.backward()
    assert torch.isfinite(loss)
    logits = student.net(data["image1"], data["image2"])
    assert torch.isfinite(student.distillation_loss(data, logits))


@pytest.mark.parametrize(
    ("name", "stages"),
    [(MODELS[0], STAGES)] + [(name, ("baseline", "student")) for name in MODELS[1:]],
)
def test_config_composes_with_the_stages(
    compose_config: Composer, name: str, stages: tuple[str, ...]
) -> None:
    # the stage group is the same for every model: all of it once, the two kinds elsewhere
    for stage in stages:
        cfg = compose_config("train", f"model={name}", f"stage={stage}")
        assert cfg.model.name == name and cfg.stage.name == stage
        assert name in cfg.run_dir
    assert model_config(name) == cfg.model  # the reader that tools use outside Hydra agrees


@pytest.mark.parametrize("name", MODELS)
def test_origin_partition_inference(name: str) -> None:
    from cdkd.inference.origin_partition import OriginPartition
    from cdkd.partition import PartitionScheme

    net = create_model(name, **get_entry(name).info.test_overrides).eval()
    op = OriginPartition(net, [net, net], PartitionScheme.create("two"))
    data = batch()
    with torch.no_grad():
        logits = op(data["image1"], data["image2"])
        direct = net(data["image1"], data["image2"])
    assert logits.shape == direct.shape
    assert torch.allclose(logits, direct, atol=1e-5)  # every teacher is M_O itself here
    assert op.predict(logits).dtype == torch.bool


#: Teachers that are not CNNs, taught to TinyCD: one per family in the default suite.
BIG = [
    pytest.param(n, marks=[] if n in {"changer_b0", "changeformer_b0", "ban_vit_b"} else [SLOW])
    for n in MODELS
    if get_entry(n).info.family != "CNN"
]


@pytest.mark.parametrize("name", BIG)
def test_teaches_a_small_student_across_architectures(name: str, tmp_path: Path) -> None:
    init = save_checkpoint(tmp_path / "tiny.ckpt", "tinycd", partition=TWO)
    teachers = save_teachers(tmp_path, name, partition=TWO, **module_kwargs(name))
    student = DistillationModule(
        init=str(init),
        teachers=teachers,
        distill_lambda=1.0,
        partition=TWO,
        teacher_model=name,
        model="tinycd",
        loss="bce",
    ).train()
    loss = student.training_step(batch(), 0)
    loss.backward()
    assert torch.isfinite(loss)
