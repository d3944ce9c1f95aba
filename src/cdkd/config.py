"""Where the Hydra configuration tree lives, and a model config read as Hydra composes it."""

from __future__ import annotations

from pathlib import Path
from typing import cast

from omegaconf import DictConfig, OmegaConf


def config_dir() -> str:
    """Absolute path of the Hydra config tree: ``conf/`` of a checkout, or the packaged copy."""
    here = Path(__file__).resolve()
    for candidate in (here.parent / "conf", here.parents[2] / "conf"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise RuntimeError("cdkd configuration folder not found (expected conf/train.yaml)")


def model_config(name: str) -> DictConfig:
    """``conf/model/<name>.yaml`` as the ``model`` group composes it: over its defaults (``_base``).

    Reads the files directly, without Hydra, so that code already running under a Hydra app
    (ONNX export) can use it; the model configs list only files of their own group.
    """
    folder = Path(config_dir()) / "model"
    conf = OmegaConf.load(folder / f"{name}.yaml")
    defaults = conf.pop("defaults", [])
    layers = [OmegaConf.load(folder / f"{entry}.yaml") for entry in defaults if entry != "_self_"]
    return cast(DictConfig, OmegaConf.merge(*layers, conf))
