"""Where the Hydra configuration tree lives, the resolvers its configs use, and a model
config read as Hydra composes it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf

from cdkd.runs.layout import resolve


def config_dir() -> str:
    """Absolute path of the Hydra config tree: ``conf/`` of a checkout, or the packaged copy."""
    here = Path(__file__).resolve()
    for candidate in (here.parent / "conf", here.parents[2] / "conf"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise RuntimeError("cdkd configuration folder not found (expected conf/train.yaml)")


def plain(value: Any) -> Any:
    """A config value as plain Python (mappings and lists converted, scalars unchanged)."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def register_resolvers() -> None:
    """Make ``${layout:...}`` available to every config composed in this process (idempotent)."""
    if not OmegaConf.has_resolver("layout"):
        OmegaConf.register_new_resolver("layout", resolve)


register_resolvers()


def model_config(name: str) -> DictConfig:
    """``conf/model/<name>.yaml`` as Hydra composes it: over ``conf/_base/model.yaml``.

    Reads the files directly, without Hydra, so that code already running under a Hydra app
    (ONNX export) can use it; a model config's defaults list only absolute config paths placed
    at its own package (``/_base/model@_here_``).
    """
    root = Path(config_dir())
    conf = cast(DictConfig, OmegaConf.load(root / "model" / f"{name}.yaml"))
    defaults = [entry for entry in conf.pop("defaults", []) if entry != "_self_"]
    layers = [
        OmegaConf.load(root / f"{entry.split('@')[0].lstrip('/')}.yaml") for entry in defaults
    ]
    return cast(DictConfig, OmegaConf.merge(*layers, conf))
