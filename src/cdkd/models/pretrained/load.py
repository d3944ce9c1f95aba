"""Loading resolved weight files into a network's pretrained parts."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from cdkd.errors import CheckpointError, brief
from cdkd.models.pretrained.convert import CONVERTERS
from cdkd.models.pretrained.parts import Part, parts_of
from cdkd.models.weight_files import read_weights

log = logging.getLogger(__name__)

#: Keys of a part that no release holds (trained from scratch inside the part).
_OWN_KEYS = re.compile(r"(lora_[ab]\.|\.gate\.)")


def _npz_state(path: Path, part: nn.Module, tag: str) -> dict[str, torch.Tensor]:
    """Google's ``.npz`` ViT weights read through timm into a full-depth copy of the part."""
    import timm

    arch = tag.split(":", 1)[1].split(".")[0]
    size = cast(Any, part).patch_embed.img_size
    reference: Any = timm.create_model(arch, num_classes=0, img_size=size)
    try:
        reference.load_pretrained(str(path))
    except Exception as exc:
        raise CheckpointError(f"{path}: not loadable as {tag} weights ({brief(exc, 1)})") from exc
    return reference.state_dict()


def load_part(network: nn.Module, model: str, part: Part, path: Path) -> int:
    """Load ``path`` into ``part`` of ``network``; returns the number of tensors loaded.

    Every tensor of the part that a release holds must be in the file with its shape,
    otherwise a :class:`CheckpointError` names a few that are not.
    """
    module = network.get_submodule(part.module) if part.module else network
    if path.suffix == ".npz" and part.kind == "vit":
        state = _npz_state(path, module, part.tag)
    else:
        state = read_weights(path)
    try:
        state = CONVERTERS[part.kind](state, module)
    except (RuntimeError, KeyError, ValueError, IndexError) as exc:
        raise CheckpointError(f"{path}: not {part.tag} weights ({brief(exc, 1)})") from exc
    own = module.state_dict()
    if part.kind == "efficientnet":  # TinyCD's own layers live beside its backbone
        own = {k: v for k, v in own.items() if k.startswith(("stem.", "stages."))}
    wanted = [k for k in own if not _OWN_KEYS.search(k)]
    missing = [k for k in wanted if k not in state]
    shapes = [k for k in wanted if k in state and state[k].shape != own[k].shape]
    problems = []
    for label, keys in (("missing", missing), ("shape of", shapes)):
        if keys:
            more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
            problems.append(f"{label} {', '.join(keys[:3])}{more}")
    if problems:
        raise CheckpointError(
            f"{path}: does not fit {model} {part.name} ({part.tag}): {'; '.join(problems)}"
        )
    with torch.no_grad():
        for key in wanted:
            own[key].copy_(state[key])
    if part.freeze:
        module.requires_grad_(False)
    return len(wanted)


def load_pretrained(network: nn.Module, model: str, files: Mapping[str, Path]) -> None:
    """Load each part named in ``files`` (part name -> resolved file) and log where from."""
    for part in parts_of(model):
        if part.name in files:
            count = load_part(network, model, part, files[part.name])
            frozen = ", frozen" if part.freeze else ""
            log.info(
                "%s: %s loaded from %s (%s, %d tensors%s)",
                model,
                part.name,
                files[part.name],
                part.tag.replace(":", " "),
                count,
                frozen,
            )
