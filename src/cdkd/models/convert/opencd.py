"""Open-CD state dicts (and the official MTKD code's, an Open-CD fork) in cdkd's keys.

Each network has a list of rules: a regular expression that must match a whole Open-CD key
and the cdkd key it becomes (``re`` replacement syntax), or ``None`` for a tensor cdkd does not
have (a training-only head, a second name of a shared module). The first matching rule wins;
a key no rule matches is kept as it is, so a strict load names it. Tensors whose layout differs
(not only their name) are reshaped by the network's ``reshape`` step. The mapping of every
network is proven against the official code by ``tests/models/test_official_fixtures.py``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from cdkd.models.convert.opencd_vit import ban_reshape, ban_rules, ttp_reshape, ttp_rules
from cdkd.models.convert.rules import (
    RESNET_V1C,
    NetworkMap,
    Rule,
    conv_module,
    mit_reshape,
    mit_rules,
    prefixed,
    rename,
)


def _efficientnet_stages() -> list[Rule]:
    """torchvision EfficientNet-B4 ``features[1:4]`` -> timm's ``stages``: the first stage's
    blocks are depthwise-separable (dw, SE, pw), the next two inverted residuals (pw, dw, SE,
    pw-linear)."""
    separable = [("0.0", "conv_dw"), ("0.1", "bn1"), ("1.fc1", "se.conv_reduce")]
    separable += [("1.fc2", "se.conv_expand"), ("2.0", "conv_pw"), ("2.1", "bn2")]
    inverted = [("0.0", "conv_pw"), ("0.1", "bn1"), ("1.0", "conv_dw"), ("1.1", "bn2")]
    inverted += [("2.fc1", "se.conv_reduce"), ("2.fc2", "se.conv_expand")]
    inverted += [("3.0", "conv_pwl"), ("3.1", "bn3")]
    rules: list[Rule] = []
    for stage, parts in ((1, separable), (2, inverted), (3, inverted)):
        src = rf"backbone\._backbone\.{stage}\.(\d+)\.block\."
        dst = rf"stages.{stage - 1}.\1."
        for old, new in parts:
            rules.append((src + re.escape(old) + r"\.(.*)", dst + new + r".\2"))
    return rules


CHANGER_HEAD: list[Rule] = [
    (r"decode_head\.conv_seg\.(.*)", r"head.classifier.1.\1"),
    (r"decode_head\.convs\.(\d)\.conv\.(.*)", r"head.fusion.lateral.\1.0.\2"),
    (r"decode_head\.convs\.(\d)\.bn\.(.*)", r"head.fusion.lateral.\1.1.\2"),
    (r"decode_head\.fusion_conv\.conv\.(.*)", r"head.fusion.fuse.0.\1"),
    (r"decode_head\.fusion_conv\.bn\.(.*)", r"head.fusion.fuse.1.\1"),
    (r"decode_head\.neck_layer\.flow_make\.(.*)", r"head.align.flow.\1"),
    (r"decode_head\.discriminator\.layers\.([01])\.(.*)", r"head.refine.layers.\1.\2"),
    (r"decode_head\.discriminator\.layers\.4\.(.*)", r"head.refine.layers.3.\1"),
]


def _fcsn() -> list[Rule]:
    """FC-EF / FC-Siam: numbered ``convSI``/``bnSI`` (stage S, conv I) -> nested sequentials;
    the decoder's ``convSId`` run from I = last to 1, the last (``conv11d``) without BN."""
    rules: list[Rule] = []
    for stage, convs in ((1, 2), (2, 2), (3, 3), (4, 3)):
        rules.append((rf"backbone\.upconv{stage}\.(.*)", rf"upsample.{stage - 1}.\1"))
        for conv in range(1, convs + 1):
            enc = f"encoder.{stage - 1}.{conv - 1}"
            dec = f"decoder.{stage - 1}.{convs - conv}"
            rules.append((rf"backbone\.conv{stage}{conv}\.(.*)", rf"{enc}.0.\1"))
            rules.append((rf"backbone\.bn{stage}{conv}\.(.*)", rf"{enc}.1.\1"))
            conv_dst = dec if (stage, conv) == (1, 1) else f"{dec}.0"
            rules.append((rf"backbone\.conv{stage}{conv}d\.(.*)", rf"{conv_dst}.\1"))
            rules.append((rf"backbone\.bn{stage}{conv}d\.(.*)", rf"{dec}.1.\1"))
    rules.append((r"decode_head\.conv_seg\.(.*)", r"head.1.\1"))
    return rules


CHANGESTAR_MIXIN: list[Rule] = [
    (r"decode_head\.changemixin\.convs\.0\.(.*)", r"mixin.\1"),
    (r"decode_head\.conv_seg\.(.*)", r"classifier.1.\1"),
]


def _farseg() -> list[Rule]:
    """ChangeStar FarSeg: the FPN neck and FarSeg's relation and decoder modules -> ``body``;
    FarSeg's decoder blocks alternate conv and upsampling in cdkd (block ``j`` at ``2j``)."""
    fsr = r"decode_head\.seg_head\._fsr\."
    rules: list[Rule] = [
        (r"neck\.lateral_convs\.(\d)\.conv\.(.*)", r"body.laterals.\1.\2"),
        (r"neck\.fpn_convs\.(\d)\.conv\.(.*)", r"body.smooth.\1.\2"),
        (fsr + r"scene_encoder\.(.*)", r"body.scene_encoders.\1"),
        *conv_module(fsr + r"content_encoders\.(\d)\.0", r"body.content_encoders.\1"),
        *conv_module(fsr + r"feature_reencoders\.(\d)\.0", r"body.reencoders.\1"),
    ]
    for j in range(3):
        src = rf"decode_head\.seg_head\._decoder\.blocks\.(\d)\.{j}\.0"
        rules += conv_module(src, rf"body.decoders.\1.{2 * j}")
    return rules + CHANGESTAR_MIXIN


def _upernet() -> list[Rule]:
    """ChangeStar UPerNet: mmseg's UPerHead (PPM, laterals, FPN convs) -> ``body``."""
    head = r"decode_head\.seg_head\."
    return [
        *conv_module(head + r"psp_modules\.(\d)\.1", r"body.pools.\1.1"),
        *conv_module(head + r"bottleneck", r"body.pool_fuse"),
        *conv_module(head + r"lateral_convs\.(\d)", r"body.laterals.\1"),
        *conv_module(head + r"fpn_convs\.(\d)", r"body.smooth.\1"),
        *conv_module(head + r"fpn_bottleneck", r"body.fuse"),
        *CHANGESTAR_MIXIN,
    ]


def _cgnet() -> list[Rule]:
    """CGNet: VGG stages, reductions and the change-guide modules (deepest first in cdkd)."""
    rules: list[Rule] = [
        (r"backbone\.(?:inc|down\d)\.(\d+)\.(.*)", r"encoder.\1.\2"),
        *conv_module(r"backbone\.up_layer(\d)", r"unused.up_layer\1"),
        *conv_module(r"backbone\.decoder\.0", "prior_head.0"),
        (r"backbone\.decoder\.1\.(.*)", r"prior_head.1.\1"),
        *conv_module(r"backbone\.decoder_final\.0", "head.0"),
        (r"backbone\.decoder_final\.1\.(.*)", r"head.1.\1"),
    ]
    for level in (1, 2, 3, 4):
        rules += conv_module(rf"backbone\.conv_reduce_{level}", f"reduce.{level - 1}")
    for level in (2, 3, 4):
        rules.append((rf"backbone\.cgm_{level}\.gamma", f"guides.{4 - level}.gamma"))
        rules.append(
            (rf"backbone\.cgm_{level}\.(query|key|value)_conv\.(.*)", rf"guides.{4 - level}.\1.\2")
        )
        rules += conv_module(rf"backbone\.decoder_module{level}", f"decoder.{4 - level}")
    return rules


def _snunet() -> list[Rule]:
    """SNUNet: nested-UNet nodes ``convI_J`` and upsamplers ``UpI_J`` -> indexed lists; the
    ensemble channel attention ``ca1`` (within levels) and ``ca`` (across them)."""
    rules: list[Rule] = [(r"backbone\.conv(\d)_0\.(.*)", r"encoder.\1.\2")]
    for j in range(1, 5):
        rules.append((rf"backbone\.conv(\d)_{j}\.(.*)", rf"nodes.\1.{j - 1}.\2"))
    for i in range(1, 5):
        rules.append((rf"backbone\.Up{i}_(\d)\.up\.(.*)", rf"up.{i - 1}.\1.\2"))
    rules += [
        (r"backbone\.ca1\.fc1\.(.*)", r"intra_attention.mlp.0.\1"),
        (r"backbone\.ca1\.fc2\.(.*)", r"intra_attention.mlp.2.\1"),
        (r"backbone\.ca\.fc1\.(.*)", r"inter_attention.mlp.0.\1"),
        (r"backbone\.ca\.fc2\.(.*)", r"inter_attention.mlp.2.\1"),
        (r"decode_head\.conv_seg\.(.*)", r"head.1.\1"),
    ]
    return rules


def _hanet() -> list[Rule]:
    """HANet: encoder cells ``conv0/2/4/5``, per-level fusion ``conv6_K_B`` + ``convK_1`` and
    the channel/row/column attention of level K -> indexed lists (level K at ``K - 1``)."""
    rules: list[Rule] = [
        (r"backbone\.conv0_0\.(.*)", r"stem.\1"),
        (r"backbone\.conv6\.(.*)", r"reduce.\1"),
        (r"decode_head\.conv_seg\.(.*)", r"head.1.\1"),
    ]
    for index, cell in enumerate((0, 2, 4, 5)):
        rules.append((rf"backbone\.conv{cell}\.(.*)", rf"encoder.{index}.\1"))
    for level in range(1, 5):
        dst = level - 1
        rules += [
            (rf"backbone\.conv{level}_1\.(.*)", rf"fusion.{dst}.merge.\1"),
            (rf"backbone\.cam_attention_{level}\.attn\.(.*)", rf"attention.{dst}.channel.\1"),
            (rf"backbone\.row_attention_{level}\.gamma", f"attention.{dst}.row.gamma"),
            (rf"backbone\.col_attention_{level}\.gamma", f"attention.{dst}.column.gamma"),
            (rf"backbone\.row_attention_{level}\.(\w+)_conv\.(.*)", rf"attention.{dst}.row.\1.\2"),
            (
                rf"backbone\.col_attention_{level}\.(\w+)_conv\.(.*)",
                rf"attention.{dst}.column.\1.\2",
            ),
            (rf"backbone\.c{level}_conv\.(.*)", rf"unused_convs.{dst}.\1"),
        ]
        for branch in range(1, 5):
            src = rf"backbone\.conv6_{level}_{branch}\.(.*)"
            rules.append((src, rf"fusion.{dst}.branches.{branch - 1}.\1"))
    return rules


def _ifn() -> list[Rule]:
    """IFN: the shared VGG (``encoder1`` and ``encoder2`` are one module) and the five decoder
    levels ``oK`` (deepest first) with their attention, upsampling and side outputs."""
    rules: list[Rule] = [
        (r"backbone\.encoder1\.features\.(.*)", r"encoder.\1"),
        (r"backbone\.encoder2\..*", None),
        (r"backbone\.ca1\.fc1\.seq\.0\.(.*)", r"unused.ca1.mlp.0.\1"),
        (r"backbone\.ca1\.fc2\.seq\.0\.(.*)", r"unused.ca1.mlp.2.\1"),
        (r"backbone\.bn_ca(\d)\.(.*)", r"unused.bn_ca\1.\2"),
        (r"backbone\.o1_conv3\.seq\.0\.(.*)", r"side_heads.0.\1"),
        (r"backbone\.o5_conv4\.seq\.0\.(.*)", r"head.\1"),
    ]
    for level in (2, 3, 4):
        rules.append((rf"backbone\.o{level}_conv4\.seq\.0\.(.*)", rf"side_heads.{level - 1}.\1"))
    for level in range(1, 6):
        dst = f"levels.{level - 1}"
        rules += [
            (rf"backbone\.sa{level}\.conv\.seq\.1\.(.*)", rf"{dst}.spatial_attention.conv.\1"),
            (rf"backbone\.bn_sa{level}\.(.*)", rf"{dst}.norm.\1"),
            (rf"backbone\.ca{level}\.fc1\.seq\.0\.(.*)", rf"{dst}.channel_attention.mlp.0.\1"),
            (rf"backbone\.ca{level}\.fc2\.seq\.0\.(.*)", rf"{dst}.channel_attention.mlp.2.\1"),
            (rf"backbone\.trans_conv{level}\.(.*)", rf"upsample.{level - 1}.\1"),
        ]
        for conv in range(1, 4):
            src = rf"backbone\.o{level}_conv{conv}\.(\d)\.(.*)"
            rules.append((src, rf"{dst}.convs.{conv - 1}.\1.\2"))
    return rules


#: ShuffleNetV2 units of LightCDNet-s's fusion block and of each stage (``stage_repeat_num``).
_LIGHTCDNET_FUSION_UNITS = 4
_LIGHTCDNET_UNITS = (4, 8, 4)


def _lightcdnet() -> list[Rule]:
    """LightCDNet: the backbone's flat ``stages`` (ShuffleNetV2 units, each stage closed by a
    criss-cross attention module) -> per-stage unit lists and ``attention``; the fusion block,
    the TinyFPN neck, the DS-FPN head and the FCN auxiliary head."""
    rules: list[Rule] = [
        (r"backbone\.conv1\.(.*)", r"stem.\1"),
        (r"backbone\.fusion_conv\.stages\.0\.(.*)", r"fusion.expand.\1"),
        (r"backbone\.fusion_conv\.single_conv\.(.*)", r"fusion.reduce.\1"),
        (r"backbone\.fusion_conv\.time_attn\.(.*)", r"fusion.time_attention.\1"),
        (r"backbone\.fusion_conv\.final_conv\.(.*)", r"fusion.merge.\1"),
        (r"neck\.lateral_convs\.(\d)\.conv\.(.*)", r"fpn.laterals.\1.\2"),
        (r"neck\.fpn_convs\.(\d)\.conv\.(.*)", r"fpn.smooth.\1.\2"),
        *conv_module(r"decode_head\.scale_heads\.(\d)\.0", r"scale_heads.\1"),
        (r"decode_head\.conv_seg\.(.*)", r"classifier.\1"),
        *conv_module(r"auxiliary_head\.convs\.0", "aux_head.0"),
        (r"auxiliary_head\.conv_seg\.(.*)", r"aux_head.1.\1"),
    ]
    for unit in range(_LIGHTCDNET_FUSION_UNITS):
        src = rf"backbone\.fusion_conv\.stages\.{unit + 1}\.(.*)"
        rules.append((src, rf"fusion.units.{unit}.\1"))
    start = 0
    for stage, units in enumerate(_LIGHTCDNET_UNITS):
        for unit in range(units):
            src = rf"backbone\.stages\.{start + unit}\.(.*)"
            rules.append((src, rf"stages.{stage}.{unit}.\1"))
        cca = rf"backbone\.stages\.{start + units}\.cca\."
        rules.append((cca + r"(query|key|value)_conv\.(.*)", rf"attention.{stage}.\1.\2"))
        rules.append((cca + r"gamma\.scale", f"attention.{stage}.gamma"))
        start += units + 1
    return rules


MAPPINGS: dict[str, NetworkMap] = {
    "ban_vit_b": NetworkMap(ban_rules(), ban_reshape),
    "ban_vit_b_in21k": NetworkMap(ban_rules(), ban_reshape),
    "ban_vit_l": NetworkMap(ban_rules(), ban_reshape),
    "changestar_farseg": NetworkMap(prefixed("backbone.", "backbone.", RESNET_V1C) + _farseg()),
    "changestar_upernet": NetworkMap(prefixed("backbone.", "backbone.", RESNET_V1C) + _upernet()),
    "fc_ef": NetworkMap(_fcsn()),
    "fc_siam_conc": NetworkMap(_fcsn()),
    "fc_siam_diff": NetworkMap(_fcsn()),
    "hanet": NetworkMap(_hanet()),
    "ifn": NetworkMap(_ifn()),
    "lightcdnet_s": NetworkMap(_lightcdnet()),
    "snunet_c16": NetworkMap(_snunet()),
    "stanet_base": NetworkMap(
        [
            *prefixed("backbone.", "backbone.", RESNET_V1C),
            (r"decode_head\.fpn_convs\.(\d)\.conv\.(.*)", r"lateral.\1.0.\2"),
            (r"decode_head\.fpn_convs\.(\d)\.bn\.(.*)", r"lateral.\1.1.\2"),
            (r"decode_head\.fpn_bottleneck\.(\d)\.conv\.(.*)", r"fuse.\1.0.\2"),
            (r"decode_head\.fpn_bottleneck\.(\d)\.bn\.(.*)", r"fuse.\1.1.\2"),
        ]
    ),
    "bit_r18": NetworkMap(
        [
            *prefixed("backbone.", "backbone.", RESNET_V1C),
            (r"decode_head\.enc_pos_embedding", "pos_embedding"),
            (r"decode_head\.conv_seg\.(.*)", r"classifier.1.\1"),
            (r"decode_head\.conv_att\.conv\.(.*)", r"token_attention.0.\1"),
            (r"decode_head\.pre_process\.1\.conv\.(.*)", r"reduce.0.\1"),
            (r"decode_head\.(\w+coder\.\d+)\.attn\.fc_out\.0\.(.*)", r"\1.attn.proj.\2"),
            (r"decode_head\.(\w+coder\.\d+)\.attn\.(.*)", r"\1.attn.\2"),
            (r"decode_head\.(\w+coder\.\d+)\.ff\.0\.(.*)", r"\1.ffn.0.\2"),
            (r"decode_head\.(\w+coder\.\d+)\.ff\.3\.(.*)", r"\1.ffn.2.\2"),
            (r"decode_head\.(\w+coder\.\d+)\.norm1\.(.*)", r"\1.norm_query.\2"),
            (r"decode_head\.(\w+coder\.\d+)\.norm1_\.(.*)", r"\1.norm_ref.\2"),
            (r"decode_head\.(\w+coder\.\d+)\.norm2\.(.*)", r"\1.norm_ffn.\2"),
        ]
    ),
    "cgnet": NetworkMap(_cgnet()),
    "changeformer_b0": NetworkMap(mit_rules("backbone.", "backbone.") + CHANGER_HEAD, mit_reshape),
    "changeformer_b1": NetworkMap(mit_rules("backbone.", "backbone.") + CHANGER_HEAD, mit_reshape),
    "changer_b0": NetworkMap(mit_rules("backbone.", "backbone.") + CHANGER_HEAD, mit_reshape),
    "changer_b1": NetworkMap(mit_rules("backbone.", "backbone.") + CHANGER_HEAD, mit_reshape),
    "changer_r18": NetworkMap(prefixed("backbone.", "backbone.", RESNET_V1C) + CHANGER_HEAD),
    "changer_s50": NetworkMap(prefixed("backbone.", "backbone.", RESNET_V1C) + CHANGER_HEAD),
    "ttp_sam_l": NetworkMap(ttp_rules(), ttp_reshape),
    "tinycd": NetworkMap(
        [
            *_efficientnet_stages(),
            (r"backbone\._backbone\.0\.(.*)", r"stem.\1"),
            (r"backbone\._first_mix\._mixing\._convmix\.(.*)", r"first_mix.mix.block.\1"),
            (r"backbone\._first_mix\._linear\._linears\.(.*)", r"first_mix.mlp.\1"),
            (
                r"backbone\._mixing_mask\.([01])\._mixing\._convmix\.(.*)",
                r"mask_mixes.\1.mix.block.\2",
            ),
            (r"backbone\._mixing_mask\.([01])\._linear\._linears\.(.*)", r"mask_mixes.\1.mlp.\2"),
            (r"backbone\._mixing_mask\.2\._convmix\.(.*)", r"deep_mix.block.\1"),
            (r"backbone\._up\.(\d)\._convolution\.(.*)", r"up.\1.block.\2"),
            (r"backbone\._classify\._linears\.(.*)", r"classifier.\1"),
        ]
    ),
}


def opencd_networks() -> list[str]:
    """cdkd networks whose Open-CD state dicts convert."""
    return sorted(MAPPINGS)


def from_opencd(model: str, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Open-CD state dict of ``model`` (a cdkd network name) in cdkd's keys."""
    if model not in MAPPINGS:
        raise KeyError(f"no Open-CD mapping for model '{model}'")
    mapping = MAPPINGS[model]
    out = rename(state, mapping.rules)
    return mapping.reshape(out) if mapping.reshape is not None else out
