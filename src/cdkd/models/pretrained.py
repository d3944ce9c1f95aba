"""Pretrained parts of the networks: where their weights come from and how they are loaded.

Every network is built with random weights; :func:`load_pretrained` then fills its pretrained
parts (the backbones the official configs start from). Each part's file is found in this
order: a local file (``model.backbone_weights``), the Hugging Face hub cache timm and smp use,
the network. A local file may be timm's or smp's state dict or an original release
(OpenAI/open_clip CLIP, SAM's ``sam_vit_*.pth``, Google's ``.npz`` ViT, the SegFormer MiT,
mmseg's ResNetV1c), plain or inside a checkpoint (``state_dict``/``model``, ``backbone.``
prefix).
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch
from torch import nn

from cdkd.errors import CdkdError, CheckpointError, ConfigError, brief

log = logging.getLogger(__name__)

#: Seconds to wait for the hub's host before calling the network unreachable.
PROBE_TIMEOUT = 5.0
#: The command that downloads a model's pretrained parts ahead of time.
FETCH = "python -m cdkd.weights fetch models=[{model}]"


class WeightsUnavailableError(CdkdError):
    """A pretrained part's weights are neither given, cached nor downloadable."""


@dataclass(frozen=True)
class Source:
    """A released weight file: library, tag, and its Hugging Face hub location.

    Attributes:
        library: ``timm`` or ``smp``.
        tag: the library's name of the weights (``resnet18d.ra2_in1k``, ``mit_b1.imagenet``).
        repo_id: hub repository holding the file.
        revision: hub revision (smp pins one; timm uses ``main``).
        filename: the file in the repository.
    """

    library: str
    tag: str
    repo_id: str
    revision: str | None = None
    filename: str = "model.safetensors"

    def __str__(self) -> str:
        return f"{self.library} {self.tag}"


@dataclass(frozen=True)
class Part:
    """A pretrained part of a network.

    Attributes:
        name: key of the part in ``model.backbone_weights={name: PATH}``.
        module: path of the part inside the network (``""``: the network itself).
        kind: how a file is converted to the part's keys (a key of :data:`CONVERTERS`).
        tag: library and weight tag, ``timm:<model>.<tag>`` or ``smp:<encoder>``.
        reference: the official recipe starts from these weights (Changer-R18/S50 do not).
        freeze: the part is frozen once its weights are loaded (IFN's VGG-16).
    """

    name: str
    module: str
    kind: str
    tag: str
    reference: bool = True
    freeze: bool = False

    @property
    def source(self) -> Source:
        """Where the library downloads these weights from."""
        library, tag = self.tag.split(":", 1)
        if library == "smp":
            from segmentation_models_pytorch.encoders import encoders

            settings = encoders[tag]["pretrained_settings"]["imagenet"]
            return Source("smp", f"{tag}.imagenet", settings["repo_id"], settings["revision"])
        import timm

        repo = timm.models.get_pretrained_cfg(tag).hf_hub_id
        return Source("timm", tag, repo + tag if repo.endswith("/") else repo)


def _resnet_part(reference: bool = True) -> Part:
    return Part("backbone", "backbone", "resnet_v1c", "timm:resnet18d.ra2_in1k", reference)


def _mit_part(variant: str, module: str = "backbone", name: str = "backbone") -> Part:
    return Part(name, module, "mit", f"smp:{variant}")


#: Pretrained parts of every network that has any (the others train from scratch).
PARTS: dict[str, tuple[Part, ...]] = {
    "stanet_base": (_resnet_part(),),
    "ifn": (Part("backbone", "encoder", "vgg", "timm:vgg16.tv_in1k", freeze=True),),
    "bit_r18": (_resnet_part(),),
    "changestar_farseg": (_resnet_part(),),
    "changestar_upernet": (_resnet_part(),),
    "changeformer_b0": (_mit_part("mit_b0"),),
    "changeformer_b1": (_mit_part("mit_b1"),),
    "tinycd": (Part("backbone", "", "efficientnet", "timm:efficientnet_b4.ra2_in1k"),),
    "changer_b0": (_mit_part("mit_b0"),),
    "changer_b1": (_mit_part("mit_b1"),),
    "changer_r18": (_resnet_part(reference=False),),
    "changer_s50": (Part("backbone", "backbone", "timm", "timm:resnest50d.in1k", False),),
    "cgnet": (Part("backbone", "encoder", "vgg", "timm:vgg16_bn.tv_in1k"),),
    "ban_vit_b": (
        Part("encoder", "encoder", "vit", "timm:vit_base_patch16_clip_quickgelu_224.openai"),
        _mit_part("mit_b2", "branch.mit", "side"),
    ),
    "ban_vit_b_in21k": (
        Part("encoder", "encoder", "vit", "timm:vit_base_patch16_224.augreg_in21k"),
        _mit_part("mit_b2", "branch.mit", "side"),
    ),
    "ban_vit_l": (
        Part("encoder", "encoder", "vit", "timm:vit_large_patch14_clip_quickgelu_336.openai"),
        _mit_part("mit_b2", "branch.mit", "side"),
    ),
    "ttp_sam_l": (Part("encoder", "encoder", "sam", "timm:samvit_large_patch16.sa1b"),),
}


def parts_of(model: str) -> tuple[Part, ...]:
    """The pretrained parts of ``model`` (empty for networks trained from scratch)."""
    return PARTS.get(model, ())


# --- finding the files ------------------------------------------------------------------------


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


# --- reading and converting ---------------------------------------------------------------------


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weight file (safetensors, a torch pickle or TorchScript archive).

    A checkpoint's ``state_dict``/``model``/``module`` entry is taken, a ``module.`` prefix is
    dropped, and a segmentor's ``backbone.*`` keys are kept without the prefix.
    """
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True)
            except RuntimeError as exc:
                if "TorchScript" not in str(exc):
                    raise
                obj = torch.jit.load(str(path), map_location="cpu").state_dict()
    except Exception as exc:
        raise CheckpointError(f"{path}: unreadable weights file ({brief(exc, 1)})") from exc
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in ("state_dict", "model", "module") if k in obj), None)
        if not isinstance(inner, Mapping):
            break
        obj = inner
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if obj else {}
    if not state:
        raise CheckpointError(f"{path}: does not contain a state dict of tensors")
    for prefix in ("module.", "backbone."):
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return state


_MMSEG_STEM = {"stem.0.": "conv1.0.", "stem.1.": "conv1.1.", "stem.3.": "conv1.3."}
_MMSEG_STEM |= {"stem.4.": "conv1.4.", "stem.6.": "conv1.6.", "stem.7.": "bn1."}


def _resnet_v1c(state: dict[str, torch.Tensor], part: nn.Module) -> dict[str, torch.Tensor]:
    """timm ``resnet18d`` (avg-down shortcut) or mmseg ``resnet18_v1c`` keys -> ResNetV1c's."""
    out = {}
    avg_down = any(".downsample.2." in k for k in state)
    for key, value in state.items():
        for old, new in _MMSEG_STEM.items():
            if key.startswith(old):
                key = new + key[len(old) :]
        if avg_down:
            key = key.replace(".downsample.1.", ".downsample.0.")
            key = key.replace(".downsample.2.", ".downsample.1.")
        out[key] = value
    return out


def _vgg(state: dict[str, torch.Tensor], part: nn.Module) -> dict[str, torch.Tensor]:
    """timm/torchvision VGG (``features.N``) -> the numbered feature layers."""
    return {k.removeprefix("features."): v for k, v in state.items()}


def _efficientnet(state: dict[str, torch.Tensor], part: nn.Module) -> dict[str, torch.Tensor]:
    """timm EfficientNet -> TinyCD's ``stem`` (conv, BN) and ``stages`` (the first blocks)."""
    renames = (("conv_stem.", "stem.0."), ("bn1.", "stem.1."), ("blocks.", "stages."))
    out = {}
    for key, value in state.items():
        for old, new in renames:
            if key.startswith(old):
                out[new + key[len(old) :]] = value
    return out


def _mit(state: dict[str, torch.Tensor], part: nn.Module) -> dict[str, torch.Tensor]:
    """smp or SegFormer MiT keys (the same names), or mmseg's ``layers.*`` MiT -> smp's."""
    if not any(k.startswith("layers.") for k in state):
        return state
    out = {}
    for key, value in state.items():
        match = re.match(r"layers\.(\d)\.(\d)\.(.*)", key)
        if match is None:
            continue
        stage, sub, rest = int(match[1]) + 1, int(match[2]), match[3]
        if sub == 0:
            out[f"patch_embed{stage}.{rest.replace('projection.', 'proj.')}"] = value
        elif sub == 2:
            out[f"norm{stage}.{rest}"] = value
        else:
            block, rest = rest.split(".", 1)
            out.update(_mmseg_mit_block(f"block{stage}.{block}.", rest, value))
    return out


def _mmseg_mit_block(prefix: str, rest: str, value: torch.Tensor) -> dict[str, torch.Tensor]:
    """One tensor of an mmseg MiT encoder layer under smp's names."""
    if rest.startswith("attn.attn.in_proj_"):
        kind = rest.rsplit("_", 1)[1]
        q, kv = value[: value.shape[0] // 3], value[value.shape[0] // 3 :]
        return {f"{prefix}attn.q.{kind}": q, f"{prefix}attn.kv.{kind}": kv}
    renames = {
        "attn.attn.out_proj.": "attn.proj.",
        "attn.sr.": "attn.sr.",
        "attn.norm.": "attn.norm.",
        "ffn.layers.0.": "mlp.fc1.",
        "ffn.layers.1.": "mlp.dwconv.dwconv.",
        "ffn.layers.4.": "mlp.fc2.",
    }
    for old, new in renames.items():
        if rest.startswith(old):
            if new.startswith("mlp.fc") and value.dim() == 4:
                value = value[:, :, 0, 0]
            return {prefix + new + rest[len(old) :]: value}
    return {prefix + rest: value}


def _vit(state: dict[str, torch.Tensor], part: nn.Module) -> dict[str, torch.Tensor]:
    """timm ViT, OpenAI/open_clip CLIP -> timm ViT keys, position table fitted to the part."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    return checkpoint_filter_fn(state, part)


_SAM_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def _sam(state: dict[str, torch.Tensor], part: nn.Module) -> dict[str, torch.Tensor]:
    """timm or SAM-release ViT -> TTP's encoder (gated blocks, LoRA-wrapped qkv)."""
    from timm.models.vision_transformer_sam import checkpoint_filter_fn

    from cdkd.models.zoo.ttp import fit_positions

    out = {}
    for key, value in checkpoint_filter_fn(state, part).items():
        key = _SAM_BLOCK.sub(r"blocks.\1.block.", key)
        key = re.sub(r"\.attn\.qkv\.(weight|bias)$", r".attn.qkv.base.\1", key)
        out[key] = value
    return fit_positions(out, part.state_dict())


#: How a part's weight file becomes the part's own keys (unknown keys are dropped later).
CONVERTERS: dict[str, Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]] = {
    "resnet_v1c": _resnet_v1c,
    "timm": lambda state, part: state,
    "vgg": _vgg,
    "efficientnet": _efficientnet,
    "mit": _mit,
    "vit": _vit,
    "sam": _sam,
}

#: Keys of a part that no release holds (trained from scratch inside the part).
_OWN_KEYS = re.compile(r"(lora_[ab]\.|\.gate\.)")


def _npz_state(path: Path, part: nn.Module, tag: str) -> dict[str, torch.Tensor]:
    """Google's ``.npz`` ViT weights read through timm into a full-depth copy of the part."""
    import timm

    arch = tag.split(":", 1)[1].split(".")[0]
    size = part.patch_embed.img_size
    reference = timm.create_model(arch, num_classes=0, img_size=size)
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


def random_parts(model: str, loaded: Mapping[str, Any]) -> list[Part]:
    """Parts the reference recipe starts from pretrained weights that ``loaded`` lacks."""
    return [p for p in parts_of(model) if p.reference and p.name not in loaded]
