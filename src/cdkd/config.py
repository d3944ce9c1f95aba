"""Where the Hydra configuration tree lives, for the tools and the library alike."""

from __future__ import annotations

from pathlib import Path


def config_dir() -> str:
    """Absolute path of the Hydra config tree: ``conf/`` of a checkout, or the packaged copy."""
    here = Path(__file__).resolve()
    for candidate in (here.parent / "conf", here.parents[2] / "conf"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise RuntimeError("cdkd configuration folder not found (expected conf/train.yaml)")
