"""Checkpoints as Open-CD and the official MTKD code save them, built from the official fixtures.

An official MTKD student checkpoint is an mmengine checkpoint whose ``state_dict`` holds the
student's keys beside its three teachers' (``teacher_s.``, ``teacher_m.``, ``teacher_l.``):
the teachers are submodules of the distillation model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from tests.models.official_fixtures import FIXTURE_DIR, OfficialFixture, load_fixture
from tests.models.official_fixtures import official_state_dict as official

TEACHERS = ("teacher_s", "teacher_m", "teacher_l")


def fixture(model: str) -> OfficialFixture:
    return load_fixture(FIXTURE_DIR / f"{model}.pt")


def teacher_state(state: Mapping[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    """A teacher's weights: the student's scaled by ``1 + 0.1 (index + 1)`` (BN variances stay
    positive), so that each network of a checkpoint is told apart by its outputs."""
    scale = 1.0 + 0.1 * (index + 1)
    return {k: v * scale if v.is_floating_point() else v.clone() for k, v in state.items()}


def mmengine_checkpoint(
    model: str,
    path: Path,
    teachers: Iterable[str] = (),
    config: str | None = None,
    extra: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Save the official state dict of ``model``'s fixture as an mmengine checkpoint.

    ``teachers`` adds those teacher submodules (an MTKD student checkpoint); ``config`` is the
    config text recorded in ``meta``; ``extra`` entries join the state dict.
    """
    student = official(fixture(model))
    state = dict(student)
    for name in teachers:
        index = TEACHERS.index(name)
        state |= {f"{name}.{k}": v for k, v in teacher_state(student, index).items()}
    state |= dict(extra or {})
    meta: dict[str, object] = {"epoch": 0, "iter": 200, "seed": 0}
    if config is not None:
        meta["cfg"] = config
    first = next(iter(student.values()))
    checkpoint = {
        "meta": meta,
        "state_dict": state,
        "optimizer": {"state": {0: {"exp_avg": torch.zeros_like(first)}}, "param_groups": []},
        "message_hub": {"runtime_info": {"iter": 200}},
    }
    torch.save(checkpoint, path)
    return path
