"""Fixtures shared by every test folder: tiny datasets under ``tmp_path``, composed configs.

Helpers that are plain functions live in ``tests/factories.py``.
"""

from __future__ import annotations

import functools
import itertools
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from cdkd.config import config_dir

if TYPE_CHECKING:
    from tests.factories import Composer

# Nothing in the suite may download weights: the hub client refuses, and cdkd reports it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Parallel workers (pytest-xdist, one per CPU) each compute on one thread, and so do the tools
# they start: more threads than CPUs would only make every worker wait for the others.
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


@pytest.fixture
def dataset_factory(tmp_path: Path) -> Callable[..., Path]:
    """Build a fresh tiny dataset under ``tmp_path`` per call (arguments of make_dataset)."""
    from tests.factories import make_dataset  # imports torch: only after the settings above

    made = itertools.count()

    def factory(counts: Mapping[str, int], **kwargs: object) -> Path:
        return make_dataset(tmp_path / f"dataset{next(made)}", counts, **kwargs)

    return factory


@functools.cache
def _has_paths(name: str) -> bool:
    """Whether ``conf/<name>.yaml`` composes a ``paths`` node (train, eval, analyze do)."""
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return "paths" in compose(name)


@pytest.fixture
def compose_config(tmp_path: Path) -> Composer:
    """Compose ``conf/<name>.yaml`` as ``python -m cdkd.<name> OVERRIDES`` would.

    ``paths.data_dir`` and ``paths.runs_dir`` point into ``tmp_path`` (``data/``, ``runs/``)
    where the config has them; overrides given to the call come after and win.
    """

    def composed(name: str, *overrides: str, return_hydra_config: bool = False) -> DictConfig:
        paths = [f"paths.data_dir={tmp_path / 'data'}", f"paths.runs_dir={tmp_path / 'runs'}"]
        items = [*paths, *overrides] if _has_paths(name) else list(overrides)
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            return compose(name, overrides=items, return_hydra_config=return_hydra_config)

    return composed
