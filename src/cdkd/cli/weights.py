"""List or download the pretrained weights the networks start from.

``python -m cdkd.weights list|fetch [models=[NAME,...]] [dir=PATH]``

``list`` prints one line per pretrained part: model, part, source tag, hub file, whether the
reference recipe loads it, and the cached copy with its size and SHA-256 (or that none is
cached). ``fetch`` downloads every missing file into the hub cache (``dir``), from where
training finds it; copy that folder to a machine without network and set ``HF_HUB_CACHE``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal, get_args

from omegaconf import DictConfig, OmegaConf

from cdkd.cli.common import command
from cdkd.errors import ConfigError
from cdkd.files import sha256_of
from cdkd.models import list_models
from cdkd.models.pretrained import (
    PARTS,
    Part,
    Source,
    cache_location,
    cached_file,
    fetch,
    hub_cache,
)

#: What ``cdkd.weights`` does: list the weight files and where they are, or download them.
Action = Literal["list", "fetch"]
ACTIONS: tuple[Action, ...] = get_args(Action)


def selected_models(models: Any) -> list[str]:
    """The models named by ``models`` (all with pretrained parts when None), checked."""
    if models is None:
        return sorted(PARTS)
    if OmegaConf.is_config(models):
        models = OmegaConf.to_container(models)
    names = [str(m) for m in (models if isinstance(models, list) else [models])]
    known = list_models()
    for name in names:
        if name not in known:
            raise ConfigError(f"models: unknown model '{name}'; available: {', '.join(known)}")
    return names


def _file_line(path: Path | None, source: Source, cache: Path) -> str:
    """Where the cached copy of ``source`` is, with its size and SHA-256, or that none is."""
    if path is None:
        return f"not cached (looked in {cache_location(source, cache)})"
    return f"cached {path} ({path.stat().st_size / 2**20:.1f} MiB, sha256 {sha256_of(path)})"


def part_line(model: str, part: Part, cache: Path) -> str:
    """One ``list`` line for ``part`` of ``model``."""
    source = part.source
    where = f"{source.repo_id}/{source.filename}" + (
        f"@{source.revision[:7]}" if source.revision else ""
    )
    use = "reference" if part.reference else "opt-in"
    status = _file_line(cached_file(source, cache), source, cache)
    return f"{model}  {part.name}  {source}  {where}  {use}  {status}"


@command("weights")
def run(cfg: DictConfig) -> None:
    """List or fetch the pretrained weights of the selected models."""
    if cfg.action not in ACTIONS:
        raise ConfigError(f"action '{cfg.action}' must be one of {', '.join(ACTIONS)}")
    models = selected_models(cfg.models)
    cache = Path(cfg.dir).expanduser() if cfg.dir else hub_cache()
    if cfg.action == "fetch":
        for source, path in fetch(models, cache):
            print(f"{source}  {_file_line(path, source, cache)}")
        if cfg.dir:
            print(f"on a machine without network: copy {cache} there and set HF_HUB_CACHE to it")
        return
    for model in models:
        parts = PARTS.get(model, ())
        if not parts:
            print(f"{model}  none (trained from scratch)")
        for part in parts:
            print(part_line(model, part, cache))


def main() -> None:
    """Entry point: the first word may be the action (``list`` or ``fetch``)."""
    if len(sys.argv) > 1 and sys.argv[1] in ACTIONS:
        sys.argv[1] = f"action={sys.argv[1]}"
    run()
