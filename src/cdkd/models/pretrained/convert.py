"""Converters from released weight files to the keys of a network's pretrained part.

Each takes the file's tensors and the part module, and returns the tensors under the part's
own names (keys the part lacks are dropped by the loader).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import cast

import torch
from torch import nn

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
    """timm ViT, OpenAI/open_clip CLIP -> timm ViT keys, position table fitted to the part.

    A part with a pre-norm its release lacks (BAN IN21K's) keeps the LayerNorm's initial unit
    scale and zero shift, as Open-CD's non-strict load of the release leaves it.
    """
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

    out = checkpoint_filter_fn(state, cast(VisionTransformer, part))
    norm = getattr(part, "norm_pre", None)
    if isinstance(norm, nn.LayerNorm) and "norm_pre.weight" not in out:
        out["norm_pre.weight"] = torch.ones_like(norm.weight)
        out["norm_pre.bias"] = torch.zeros_like(norm.bias)
    return out


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
