"""Where the Hydra configuration tree lives, and the resolvers its configs use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

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
