"""A run folder is continued, or reported finished, only by a run of the recipe it recorded."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from cdkd.errors import ConfigError
from cdkd.training.resume import recipe_differences
from tests.factories import Composer

Train = Callable[..., dict[str, Any]]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


@pytest.fixture
def train_in(compose_config: Composer, tmp_path: Path, run_dir: Path) -> Train:
    """``train_in(*extra)``: a tiny fc_ef run into ``run_dir``, in this process."""
    from cdkd.training.run import train

    def run(*extra: str) -> dict[str, Any]:
        return train(
            compose_config(
                "train",
                "experiment=smoke",
                "model=fc_ef",
                "logger=none",
                f"paths.data_dir={tmp_path / 'data'}",
                "data.synthetic.counts={train: 4, val: 2, test: 2}",
                "data.batch_size=2",
                "schedule.max_steps=2",
                "schedule.val_every=2",
                "schedule.warmup_steps=1",
                f"run_dir={run_dir}",
                *extra,
            )
        )

    return run


def snapshot(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` with its modification time."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_another_recipe_stops_in_one_line_and_writes_nothing(
    train_in: Train, run_dir: Path
) -> None:
    train_in()
    before = snapshot(run_dir)
    with pytest.raises(ConfigError) as error:
        train_in("model.optimizer.lr=2e-3")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{run_dir}: holds a run of another recipe")
    assert "model.optimizer.lr: 0.001 -> 0.002" in message
    assert "resume=false" in message and "run_dir=" in message
    assert snapshot(run_dir) == before
    # resume=true asks for the same run: the same answer.
    with pytest.raises(ConfigError, match=re.escape("model.optimizer.lr: 0.001 -> 0.002")):
        train_in("model.optimizer.lr=2e-3", "resume=true")


def test_the_same_recipe_is_finished_whatever_the_runtime_keys(
    train_in: Train, run_dir: Path
) -> None:
    first = train_in()
    again = train_in()
    assert again["skipped"] is True and again["val/mIoU"] == first["val/mIoU"]
    # Loader workers, a moved data folder and the evaluation's splits do not change the run.
    elsewhere = train_in(
        "data.num_workers=1", "data.root=${paths.data_dir}/moved", "test_after_fit=false"
    )
    assert elsewhere["skipped"] is True


def test_resume_false_supersedes_the_other_recipe(train_in: Train, run_dir: Path) -> None:
    train_in()
    fresh = train_in("model.optimizer.lr=2e-3", "resume=false")
    assert "skipped" not in fresh
    assert OmegaConf.load(run_dir / "config.yaml").model.optimizer.lr == 2e-3
    (superseded,) = (run_dir / "superseded").iterdir()
    assert OmegaConf.load(superseded / "config.yaml").model.optimizer.lr == 1e-3
    assert (superseded / "last.ckpt").is_file() and (superseded / "metrics.json").is_file()
    # The folder now records the new recipe: launched again, it is finished.
    assert train_in("model.optimizer.lr=2e-3")["skipped"] is True


def test_a_folder_without_a_readable_config_resumes_with_a_warning(
    train_in: Train, run_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    train_in()
    config = run_dir / "config.yaml"
    for damage in ("model: [unclosed\n", None):  # unreadable, then missing (older versions)
        if damage is None:
            config.unlink()
        else:
            config.write_text(damage)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="cdkd.training.resume"):
            assert train_in("model.optimizer.lr=2e-3")["skipped"] is True
        assert "resuming without checking its recipe" in caplog.text


def test_the_recipe_keys() -> None:
    base: dict[str, Any] = {
        "seed": 42,
        "stage": {"name": "baseline", "kind": "train"},
        "model": {"name": "fc_ef", "optimizer": {"lr": 1e-3}, "weights": None, "kwargs": {}},
        "data": {"root": "/a", "num_workers": 0, "batch_size": 4},
        "schedule": {"max_steps": 6, "distill_max_steps": 4},
        "distill": {"lambda": 1e-3, "init": "/a/best.ckpt"},
        "trainer": {"devices": 1, "max_steps": None, "precision": "auto"},
        "callbacks": {"progress_bar": None},
        "run_dir": "/a",
        "resume": "auto",
        "debug": False,
    }

    def changed(**keys: Any) -> list[str]:
        other = json.loads(json.dumps(base))
        for dotted, value in keys.items():
            *parents, leaf = dotted.split("__")
            node = other
            for parent in parents:
                node = node.setdefault(parent, {})
            node[leaf] = value
        return recipe_differences(base, other)

    assert changed(model__optimizer__lr=2e-3) == ["model.optimizer.lr: 0.001 -> 0.002"]
    assert changed(data__batch_size=8, seed=1) == ["seed: 42 -> 1", "data.batch_size: 4 -> 8"]
    assert changed(trainer__precision="16-mixed", trainer__accumulate_grad_batches=2) == [
        'trainer.precision: "auto" -> "16-mixed"',
        "trainer.accumulate_grad_batches: null -> 2",
    ]
    assert changed(model__kwargs__depth=3) == ["model.kwargs.depth: null -> 3"]
    # Where files are and how the run is executed are not the recipe.
    assert not changed(
        data__root="/b",
        data__num_workers=8,
        model__weights="/b/w.pth",
        distill__init="/b/best.ckpt",
        trainer__devices=4,
        callbacks__progress_bar="rich",
        run_dir="/b",
        resume=False,
        debug=True,
    )
    # A stage trains only with the keys of its kind: the baseline no distillation settings,
    # the student its own length.
    assert not changed(distill__lambda=1.0, schedule__distill_max_steps=9)
    assert changed(stage__kind="distill", schedule__max_steps=9) == [
        'stage.kind: "train" -> "distill"'
    ]
