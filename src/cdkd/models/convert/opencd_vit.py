"""Open-CD key mappings of the foundation-model networks: BAN (mmseg/mmpretrain ViT encoder,
MiT side branch, bridges) and TTP (SAM encoder under peft LoRA, gates, neck, head)."""

from __future__ import annotations

import re

import torch

from cdkd.models.convert.rules import Rule, conv_module, mit_reshape, mit_rules


def _mmseg_vit(src: str, dst: str) -> list[Rule]:
    """mmseg's VisionTransformer below ``src`` -> timm's below ``dst``: ``layers.N`` are the
    blocks, ``ln1``/``ln2`` their norms, the attention's ``in_proj`` timm's fused ``qkv``."""
    rules: list[tuple[str, str]] = [
        (r"(cls_token|pos_embed)", r"\1"),
        (r"patch_embed\.projection\.(.*)", r"patch_embed.proj.\1"),
        (r"ln_pre\.(.*)", r"norm_pre.\1"),
        (r"layers\.(\d+)\.ln([12])\.(.*)", r"blocks.\1.norm\2.\3"),
        (r"layers\.(\d+)\.attn\.attn\.in_proj_(weight|bias)", r"blocks.\1.attn.qkv.\2"),
        (r"layers\.(\d+)\.attn\.attn\.out_proj\.(.*)", r"blocks.\1.attn.proj.\2"),
        (r"layers\.(\d+)\.ffn\.layers\.0\.0\.(.*)", r"blocks.\1.mlp.fc1.\2"),
        (r"layers\.(\d+)\.ffn\.layers\.1\.(.*)", r"blocks.\1.mlp.fc2.\2"),
    ]
    return [(re.escape(src) + pattern, dst + repl) for pattern, repl in rules]


def _mix_ffn(src: str, dst: str) -> list[Rule]:
    """An mmseg-style MixFFN (``layers.0/1/4``: 1x1, depthwise 3x3, 1x1) -> ``fc1/pos/fc2``."""
    rest = r"(?P<rest>.*)"
    return [
        (rf"{src}\.layers\.0\.{rest}", rf"{dst}.fc1.\g<rest>"),
        (rf"{src}\.layers\.1\.{rest}", rf"{dst}.pos.\g<rest>"),
        (rf"{src}\.layers\.4\.{rest}", rf"{dst}.fc2.\g<rest>"),
    ]


def ban_rules() -> list[Rule]:
    """BAN: the frozen ViT, the Bi-TAB (an mmseg MiT and the bridges ``conv_clips`` +
    ``clip_attns``) and the MLP decoder."""
    side = r"decode_head\.side_adapter_network\."
    decoder = r"decode_head\.mask_decoder\."
    return [
        *_mmseg_vit("image_encoder.", "encoder."),
        *mit_rules("decode_head.side_adapter_network.side_encoder.", "branch.mit."),
        (side + r"conv_clips\.(\d)\.0\.(.*)", r"branch.bridges.\1.project.0.\2"),
        (side + r"conv_clips\.(\d)\.1\.conv\.(.*)", r"branch.bridges.\1.project.1.\2"),
        (side + r"clip_attns\.(\d)\.(norm[12])\.(.*)", r"branch.bridges.\1.\2.\3"),
        (side + r"clip_attns\.(\d)\.attn\.attn\.(.*)", r"branch.bridges.\1.attn.\2"),
        *_mix_ffn(side + r"clip_attns\.(\d)\.ffn", r"branch.bridges.\1.ffn"),
        *conv_module(decoder + r"convs\.(\d)", r"decoder.levels.\1"),
        *conv_module(decoder + r"fusion_conv", "decoder.fuse"),
        *_mix_ffn(decoder + "discriminator", "decoder.discriminator"),
        (decoder + r"conv_seg\.(.*)", r"decoder.classifier.\1"),
    ]


def ban_reshape(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """:func:`mit_reshape` for the side branch only (the bridges keep ``in_proj``)."""
    mit = {k: v for k, v in state.items() if k.startswith("branch.mit.")}
    rest = {k: v for k, v in state.items() if k not in mit}
    return {**rest, **mit_reshape(mit)}


def ttp_rules() -> list[Rule]:
    """TTP: mmpretrain's SAM encoder under peft (``base_model.model``; LoRA as ``lora_A/B``
    ``.default``, the wrapped qkv as ``base_layer``), its time gates (in windowed blocks), the
    SAM neck ``channel_reduction``, the SimpleFPN and the MLP head."""
    sam = r"backbone\.vision_encoder\.base_model\.model\."
    block = sam + r"layers\.(\d+)\."
    fpn = r"neck\.necks\.1\."
    return [
        (sam + r"pos_embed", "encoder.pos_embed"),
        (sam + r"patch_embed\.projection\.(.*)", r"encoder.patch_embed.proj.\1"),
        (block + r"ln([12])\.(.*)", r"encoder.blocks.\1.block.norm\2.\3"),
        (block + r"attn\.(rel_pos_[hw])", r"encoder.blocks.\1.block.attn.\2"),
        (block + r"attn\.qkv\.base_layer\.(.*)", r"encoder.blocks.\1.block.attn.qkv.base.\2"),
        (
            block + r"attn\.qkv\.lora_A\.default\.(.*)",
            r"encoder.blocks.\1.block.attn.qkv.lora_a.\2",
        ),
        (
            block + r"attn\.qkv\.lora_B\.default\.(.*)",
            r"encoder.blocks.\1.block.attn.qkv.lora_b.\2",
        ),
        (block + r"attn\.proj\.(.*)", r"encoder.blocks.\1.block.attn.proj.\2"),
        (block + r"ffn\.layers\.0\.0\.(.*)", r"encoder.blocks.\1.block.mlp.fc1.\2"),
        (block + r"ffn\.layers\.1\.(.*)", r"encoder.blocks.\1.block.mlp.fc2.\2"),
        (block + r"(down_channel|soft_ffn)\.(.*)", r"encoder.blocks.\1.gate.\2.\3"),
        (sam + r"channel_reduction\.(.*)", r"encoder.neck.\1"),
        (fpn + r"fpn1\.(.*)", r"fpn.up4.\1"),
        (fpn + r"fpn2\.0\.(.*)", r"fpn.up2.\1"),
        (fpn + r"lateral_convs\.(\d)\.conv\.(.*)", r"fpn.lateral.\1.0.\2"),
        (fpn + r"lateral_convs\.(\d)\.ln\.(.*)", r"fpn.lateral.\1.1.\2"),
        (fpn + r"fpn_convs\.(\d)\.conv\.(.*)", r"fpn.output.\1.0.\2"),
        (fpn + r"fpn_convs\.(\d)\.ln\.(.*)", r"fpn.output.\1.1.\2"),
        *conv_module(r"decode_head\.convs\.(\d)", r"head.levels.\1"),
        *conv_module(r"decode_head\.fusion_conv", "head.fuse"),
        (r"decode_head\.conv_seg\.(.*)", r"head.classifier.\1"),
    ]


def ttp_reshape(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The gates' 1x1 convolution kernels as the linear layers' ``[out, in]`` weights."""
    return {k: v.flatten(1) if ".gate." in k and v.ndim == 4 else v for k, v in state.items()}
