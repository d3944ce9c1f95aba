"""Pretrained parts of the networks: where their weights come from and how they are loaded.

Every network is built with random weights; :func:`load_pretrained` then fills its pretrained
parts (the backbones the official configs start from). Each part's file is found in this
order: a local file (``model.backbone_weights``), the Hugging Face hub cache timm and smp use,
the network. A local file may be timm's or smp's state dict or an original release
(OpenAI/open_clip CLIP, SAM's ``sam_vit_*.pth``, Google's ``.npz`` ViT, the SegFormer MiT,
mmseg's ResNetV1c), plain or inside a checkpoint (``state_dict``/``model``, ``backbone.``
prefix).

Modules: :mod:`.parts` (the table of parts), :mod:`.resolve` (finding the files),
:mod:`.convert` (release keys to the parts' keys), :mod:`.load` (loading them).
"""

from cdkd.models.pretrained.convert import CONVERTERS
from cdkd.models.pretrained.load import load_part, load_pretrained
from cdkd.models.pretrained.parts import PARTS, Part, Source, parts_of, random_parts
from cdkd.models.pretrained.resolve import (
    FETCH,
    PROBE_TIMEOUT,
    WeightsUnavailableError,
    cache_location,
    cached_file,
    download,
    fetch,
    hub_cache,
    offline,
    part_files,
    resolve,
    resolve_all,
)

__all__ = [
    "CONVERTERS",
    "FETCH",
    "PARTS",
    "PROBE_TIMEOUT",
    "Part",
    "Source",
    "WeightsUnavailableError",
    "cache_location",
    "cached_file",
    "download",
    "fetch",
    "hub_cache",
    "load_part",
    "load_pretrained",
    "offline",
    "part_files",
    "parts_of",
    "random_parts",
    "resolve",
    "resolve_all",
]
