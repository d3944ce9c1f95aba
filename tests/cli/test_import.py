"""``cdkd.import``: an official MTKD release becomes a run folder that cdkd evaluates untrained.

The release is a reduced build from the official FC-EF fixture: an mmengine student checkpoint
holding its three teachers, and M_O as its own Open-CD checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cdkd.cli.eval import main as eval_main
from cdkd.cli.import_ckpt import main as import_main
from cdkd.errors import CdkdError
from cdkd.files import sha256_of
from cdkd.models.checkpoint import load_network
from cdkd.models.convert.opencd import from_opencd
from cdkd.runs.layout import RunLayout
from cdkd.runs.meta import read_meta
from tests.factories import Composer
from tests.models.official_fixtures import official_state_dict
from tests.models.releases import TEACHERS, fixture, mmengine_checkpoint, teacher_state

MODEL = "fc_ef"
SETUP = (f"model={MODEL}", "data=synthetic", "experiment=smoke")


def run_import(compose_config: Composer, *overrides: str) -> None:
    """The import task itself: errors raise instead of exiting."""
    import_main.__wrapped__.__wrapped__(compose_config("import", *SETUP, *overrides))


@pytest.fixture
def release(tmp_path: Path) -> dict[str, Path]:
    return {
        "ckpt": mmengine_checkpoint(MODEL, tmp_path / "student.pth", teachers=TEACHERS),
        "baseline": mmengine_checkpoint(MODEL, tmp_path / "initial.pth"),
    }


def test_mtkd_release_imports_and_evaluates(
    compose_config: Composer, release: dict[str, Path], tmp_path: Path
) -> None:
    run_import(compose_config, f"ckpt={release['ckpt']}", f"baseline={release['baseline']}")
    cfg = compose_config("import", *SETUP)
    layout = RunLayout.from_config(cfg)
    lam = cfg.distill["lambda"]
    student = layout.stage("student", lam).best
    student_meta = read_meta(student, MODEL)
    assert student_meta.distill_lambda == float(lam) and student_meta.car_rule == "official"
    assert student_meta.init is not None
    assert student_meta.init.sha256 == sha256_of(release["ckpt"])
    assert set(student_meta.teachers) == {"small", "medium", "large"}
    official = official_state_dict(fixture(MODEL))
    for index, (bucket, stage) in enumerate(cfg.partition.teacher_stages.items()):
        path = layout.stage(stage).best
        meta = read_meta(path, MODEL)
        assert (meta.stage, meta.bucket) == (stage, bucket)
        assert student_meta.teachers[bucket].sha256 == sha256_of(path)
        expected = from_opencd(MODEL, teacher_state(official, index))
        network = load_network(path, MODEL).state_dict()
        assert all(torch.equal(network[k], v) for k, v in expected.items())
    assert read_meta(layout.stage("baseline").best, MODEL).stage == "baseline"

    for strategy in ("op", "mtkd"):
        overrides = (f"strategy={strategy}", f"distill.lambda={lam}")
        eval_main.__wrapped__(compose_config("eval", *SETUP, *overrides))
        metrics = json.loads((layout.eval_dir(strategy, "test") / "metrics.json").read_text())
        assert metrics["strategy"] == strategy
    routing = json.loads((layout.eval_dir("op", "test") / "metrics.json").read_text())["routing"]
    assert sum(sum(row.values()) for row in routing.values()) == 12  # every smoke test image


def test_an_existing_best_checkpoint_is_kept_unless_forced(
    compose_config: Composer, release: dict[str, Path]
) -> None:
    run_import(compose_config, f"baseline={release['baseline']}")
    with pytest.raises(CdkdError, match="exists already; force=true"):
        run_import(compose_config, f"baseline={release['baseline']}")
    run_import(compose_config, f"baseline={release['baseline']}", "force=true")


def test_separate_teachers_import_as_an_op_setup(
    compose_config: Composer, release: dict[str, Path]
) -> None:
    teachers = ", ".join(f"{b}: {release['baseline']}" for b in ("small", "medium", "large"))
    run_import(compose_config, f"teachers={{{teachers}}}", f"baseline={release['baseline']}")
    eval_main.__wrapped__(compose_config("eval", *SETUP, "strategy=op"))


def test_teachers_that_do_not_fit_the_partition_are_one_line(
    compose_config: Composer, tmp_path: Path
) -> None:
    two = mmengine_checkpoint(MODEL, tmp_path / "two.pth", teachers=("teacher_s", "teacher_l"))
    with pytest.raises(CdkdError, match="partition=two"):
        run_import(compose_config, f"ckpt={two}")
    run_import(compose_config, f"ckpt={two}", "partition=two")
