"""Finding a part's weight file: a given path, else the Hugging Face hub cache, else a download."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cdkd.errors import CdkdError, CheckpointError, ConfigError, brief
from cdkd.models.pretrained.parts import Part, Source, parts_of

#: Seconds to wait for the hub's host before calling the network unreachable.
PROBE_TIMEOUT = 5.0
#: The command that downloads a model's pretrained parts ahead of time.
FETCH = "python -m cdkd.weights fetch models=[{model}]"


class WeightsUnavailableError(CdkdError):
    """A pretrained part's weights are neither given, cached nor downloadable."""


def hub_cache() -> Path:
    """The Hugging Face hub cache folder (``HF_HUB_CACHE``, ``HF_HOME``/hub, or the default)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "huggingface"
    )
    return Path(home) / "hub"


def cached_file(source: Source, cache_dir: str | Path | None = None) -> Path | None:
    """The cached copy of ``source`` in the hub cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(
        source.repo_id,
        source.filename,
        cache_dir=str(cache_dir or hub_cache()),
        revision=source.revision,
    )
    return Path(found) if isinstance(found, str) else None


def cache_location(source: Source, cache_dir: str | Path | None = None) -> Path:
    """Where the hub cache keeps ``source`` (its repository folder)."""
    return Path(cache_dir or hub_cache()) / f"models--{source.repo_id.replace('/', '--')}"


def offline() -> bool:
    """Whether downloads are switched off (``HF_HUB_OFFLINE``)."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def download(source: Source, cache_dir: str | Path | None = None) -> Path:
    """Download ``source`` into the hub cache (raises on any failure).

    The hub's host is tried first with a short timeout, so a machine without network fails
    at once instead of after the hub client's retries.
    """
    from huggingface_hub import constants, hf_hub_download

    host = urlsplit(constants.ENDPOINT)
    socket.create_connection(
        (host.hostname or "huggingface.co", host.port or 443), timeout=PROBE_TIMEOUT
    ).close()
    return Path(
        hf_hub_download(
            source.repo_id,
            source.filename,
            revision=source.revision,
            cache_dir=str(cache_dir or hub_cache()),
        )
    )


def fetch(models: Iterable[str], cache_dir: str | Path | None = None) -> list[tuple[Source, Path]]:
    """Every weight file the pretrained parts of ``models`` need, downloading missing ones.

    Each file once, in the order the parts list them; a file that cannot be downloaded
    (offline, no network, hub error) is one :class:`WeightsUnavailableError` line.
    """
    sources = dict.fromkeys(part.source for model in models for part in parts_of(model))
    files = []
    for source in sources:
        path = cached_file(source, cache_dir)
        if path is None:
            if offline():
                raise WeightsUnavailableError(
                    f"{source}: cannot download {source.repo_id}/{source.filename} with "
                    "HF_HUB_OFFLINE set"
                )
            try:
                path = download(source, cache_dir)
            except Exception as exc:  # no network, proxy, hub error: one line for all
                raise WeightsUnavailableError(
                    f"{source}: download of {source.repo_id}/{source.filename} failed "
                    f"({brief(exc, sentences=1)})"
                ) from exc
        files.append((source, path))
    return files


def resolve(model: str, part: Part, path: str | Path | None, fetch: bool = True) -> Path:
    """The file ``part`` of ``model`` loads from: ``path``, else the hub cache, else a download.

    Raises :class:`WeightsUnavailableError` (one line: the weights, the file looked for and
    how to get it) when nothing is given or cached and the download is off or fails.
    """
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise CheckpointError(f"{path}: {model} {part.name} weights file not found")
        return path
    source = part.source
    found = cached_file(source)
    if found is not None:
        return found
    reason = "downloads are off (HF_HUB_OFFLINE)" if offline() or not fetch else None
    if reason is None:
        try:
            return download(source)
        except Exception as exc:  # no network, proxy, hub error: all end the same way
            reason = f"download failed ({brief(exc, sentences=1)})"
    option = (
        "model.backbone_weights=PATH"
        if len(parts_of(model)) == 1
        else (f"model.backbone_weights={{{part.name}: PATH}}")
    )
    raise WeightsUnavailableError(
        f"{model} needs pretrained weights {source} ({part.name}): not in the local cache "
        f"({cache_location(source) / source.filename}) and {reason}; run: "
        f"{FETCH.format(model=model)}, or pass {option}, or model.pretrained=false"
    )


def part_files(model: str, weights: str | Path | Mapping[str, Any] | None) -> dict[str, str | None]:
    """``model.backbone_weights`` as ``{part name: path or None}``, checked against the parts.

    A single path is accepted for a single-part network; a mapping names parts.
    """
    parts = parts_of(model)
    names = [part.name for part in parts]
    if not parts and weights is not None:
        raise ConfigError(f"model.backbone_weights: {model} has no pretrained parts")
    if weights is None:
        return dict.fromkeys(names)
    if isinstance(weights, Mapping):
        unknown = sorted(set(weights) - set(names))
        if unknown:
            raise ConfigError(
                f"model.backbone_weights: {model} has no part {unknown[0]!r} (parts: "
                f"{', '.join(names)})"
            )
        return {name: None if weights.get(name) is None else str(weights[name]) for name in names}
    if len(parts) > 1:
        raise ConfigError(
            f"model.backbone_weights: {model} has {len(parts)} pretrained parts "
            f"({', '.join(names)}); give {{{names[0]}: PATH, ...}}"
        )
    return {names[0]: str(weights)}


def resolve_all(
    model: str,
    pretrained: bool,
    weights: str | Path | Mapping[str, Any] | None = None,
    fetch: bool = True,
) -> dict[str, Path]:
    """The file of every part to load: all parts with ``pretrained``, else the given ones."""
    files = part_files(model, weights)
    if pretrained and not parts_of(model):
        raise ConfigError(f"{model} has no pretrained weights; set model.pretrained=false")
    return {
        part.name: resolve(model, part, files[part.name], fetch)
        for part in parts_of(model)
        if pretrained or files[part.name] is not None
    }
