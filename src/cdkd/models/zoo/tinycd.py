"""TinyCD (Codegoni et al., 2023): a 0.29 M-parameter Siamese change detector.

A shared EfficientNet-B4 stem and its first three stages (timm ``efficientnet_b4``: ``conv_stem``,
``bn1`` and ``blocks[0:3]``; widths 24/32/56 at strides 2/4/8, the same layers as torchvision's
``features[:4]``) encode each date. Mix-and-attention-mask blocks fuse the dates: the two
tensors' channels are interleaved and each pair goes through its own 3x3 conv, then a pixel-wise
MLP turns the raw images and the stride-2/4 features into one-channel masks, while the stride-8
features are only mixed. Three up-mask blocks (bilinear x2, multiply by the next mask, depthwise
3x3 and 1x1 convs with PReLU and instance norm) bring the result back to full resolution, where
a pixel-wise MLP classifier gives one change logit per pixel (BCE).

The default build is Open-CD's (classifier 32 -> 16 -> 1 with a PReLU after each conv, trained
with BCE on that output). The authors' release uses a longer classifier, 32 -> 16 -> 8 -> 1
followed by a sigmoid; :meth:`TinyCD.config_for_weights` and :meth:`TinyCD.convert_state_dict`
recognise their checkpoints (``levir_best.pth``, ``whu_best.pth``), build that head and map the
keys; ``forward`` then returns the logit before their sigmoid.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from cdkd.models.base import ChangeModel
from cdkd.models.layers import ConvNormAct
from cdkd.models.registry import ModelInfo, register_model

#: Stochastic-depth rate spread over EfficientNet-B4's blocks, as in torchvision's build that
#: Open-CD trains (timm and torchvision scale it by block index over the same 32 blocks).
DROP_PATH_RATE = 0.2
#: Number of EfficientNet-B4 stages kept after the stem.
NUM_STAGES = 3
#: TinyCD's conv units: a biased conv, PReLU, then instance norm (no affine).
_UNIT: dict[str, Any] = {"bias": True, "norm": "instance", "act": "prelu", "act_first": True}


def _pixel_mlp(widths: Sequence[int], final_prelu: bool) -> nn.Sequential:
    """1x1 convs through ``widths``, each followed by a PReLU (the last only if ``final_prelu``).

    Every layer is its own block (conv[, PReLU]), so layer ``i``'s keys are ``i.0.*`` and
    ``i.1.*`` whatever the depth.
    """
    last = len(widths) - 2
    return nn.Sequential(
        *(
            ConvNormAct(
                c_in, c_out, bias=True, norm=None, act="prelu" if i < last or final_prelu else None
            )
            for i, (c_in, c_out) in enumerate(itertools.pairwise(widths))
        )
    )


class ChannelMix(nn.Module):
    """Interleave the channels of two tensors and mix each (x_c, y_c) pair with its own 3x3 conv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = ConvNormAct(in_channels, out_channels, 3, groups=out_channels, **_UNIT)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.block(torch.stack((x, y), dim=2).flatten(1, 2))


class MaskMix(nn.Module):
    """:class:`ChannelMix` followed by a pixel-wise MLP down to a one-channel attention mask."""

    def __init__(self, in_channels: int, out_channels: int, mlp_widths: Sequence[int]) -> None:
        super().__init__()
        self.mix = ChannelMix(in_channels, out_channels)
        self.mlp = _pixel_mlp([out_channels, *mlp_widths, 1], final_prelu=True)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.mix(x, y))


class UpMask(nn.Module):
    """Bilinear x2 upsampling, gating by a mask, then depthwise 3x3 and 1x1 convs."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            *ConvNormAct(in_channels, in_channels, 3, groups=in_channels, **_UNIT),
            *ConvNormAct(in_channels, out_channels, 1, **_UNIT),
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.block(x * mask)


@register_model(
    "tinycd",
    info=ModelInfo(
        "CNN",
        "EfficientNet-B4 (first stages)",
        0.285,
        5.791,
        pretrained="timm efficientnet_b4 (ImageNet)",
        distill_target="the 1-channel change logit at full resolution",
    ),
)
class TinyCD(ChangeModel):
    """TinyCD with a one-channel change logit at full input resolution.

    Input height and width must be multiples of 8 (the masks are multiplied at strides 4, 2, 1).

    Args:
        head_hidden: hidden widths of the classifier MLP between the 32 decoder channels and the
            single output: ``(16,)`` for Open-CD, ``(16, 8)`` for the authors' release.
        head_final_prelu: apply a PReLU to the output logit (Open-CD) or not (the authors' head,
            whose sigmoid is left to the loss and the prediction).
    """

    feature_module = "classifier"
    out_channels = 1

    def __init__(
        self,
        head_hidden: Sequence[int] = (16,),
        head_final_prelu: bool = True,
    ) -> None:
        super().__init__()
        effnet = timm.create_model("efficientnet_b4", drop_path_rate=DROP_PATH_RATE)
        self.stem = nn.Sequential(effnet.conv_stem, effnet.bn1)
        self.stages = nn.ModuleList(list(effnet.blocks)[:NUM_STAGES])

        self.first_mix = MaskMix(6, 3, (10, 5))
        self.mask_mixes = nn.ModuleList([MaskMix(48, 24, (12, 6)), MaskMix(64, 32, (16, 8))])
        self.deep_mix = ChannelMix(112, 56)
        self.up = nn.ModuleList([UpMask(56, 64), UpMask(64, 64), UpMask(64, 32)])
        self.classifier = _pixel_mlp([32, *head_hidden, 1], final_prelu=head_final_prelu)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        masks = [self.first_mix(x1, x2)]
        x1, x2 = self.stem(x1), self.stem(x2)
        for i, stage in enumerate(self.stages):
            x1, x2 = stage(x1), stage(x2)
            if i < len(self.mask_mixes):
                masks.append(self.mask_mixes[i](x1, x2))
        x = self.deep_mix(x1, x2)
        for up, mask in zip(self.up, reversed(masks), strict=True):
            x = up(x, mask)
        return self.classifier(x)

    @classmethod
    def config_for_weights(cls, state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Classifier shape stored in ``state_dict`` (ours or the authors'); {} if it has none."""
        prefix = "_classify._linears." if _is_authors_format(state_dict) else "classifier."
        pattern = re.compile(rf"{re.escape(prefix)}(\d+)\.0\.weight")
        convs = sorted(
            (int(m.group(1)), tensor.shape[0])
            for key, tensor in state_dict.items()
            if (m := pattern.fullmatch(key))
        )
        if not convs:
            return {}
        last = convs[-1][0]
        return {
            "head_hidden": tuple(width for _, width in convs[:-1]),
            "head_final_prelu": f"{prefix}{last}.1.weight" in state_dict,
        }

    def convert_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rename the authors' keys to ours; our own checkpoints pass through unchanged."""
        if not _is_authors_format(state_dict):
            return state_dict
        return {_authors_key_to_ours(key): tensor for key, tensor in state_dict.items()}


def _is_authors_format(state_dict: dict[str, torch.Tensor]) -> bool:
    """Whether ``state_dict`` comes from the authors' ``ChangeClassifier``."""
    return any(key.startswith(("_backbone.", "_classify.")) for key in state_dict)


#: Parts of a torchvision MBConv block (``block.<index>.<layer>``) and their timm names. The
#: first stage's blocks have no expansion conv, so their parts are numbered one lower.
_DEPTHWISE_PARTS = {
    "0.0": "conv_dw",
    "0.1": "bn1",
    "1.fc1": "se.conv_reduce",
    "1.fc2": "se.conv_expand",
    "2.0": "conv_pw",
    "2.1": "bn2",
}
_INVERTED_PARTS = {
    "0.0": "conv_pw",
    "0.1": "bn1",
    "1.0": "conv_dw",
    "1.1": "bn2",
    "2.fc1": "se.conv_reduce",
    "2.fc2": "se.conv_expand",
    "3.0": "conv_pwl",
    "3.1": "bn3",
}
_AUTHORS_BLOCK = re.compile(r"_backbone\.([1-3])\.(\d+)\.block\.(\d\.\w+)\.(\w+)")
#: Renames of the authors' other module prefixes, first match wins.
_AUTHORS_PREFIXES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(pattern), replacement)
    for pattern, replacement in [
        (r"_backbone\.0\.", "stem."),
        (r"_first_mix\._mixing\._convmix\.", "first_mix.mix.block."),
        (r"_first_mix\._linear\._linears\.", "first_mix.mlp."),
        (r"_mixing_mask\.([01])\._mixing\._convmix\.", r"mask_mixes.\1.mix.block."),
        (r"_mixing_mask\.([01])\._linear\._linears\.", r"mask_mixes.\1.mlp."),
        # whu_best.pth nests this block one level deeper (``_mixing``); same tensors.
        (r"_mixing_mask\.2\.(?:_mixing\.)?_convmix\.", "deep_mix.block."),
        (r"_up\.(\d)\._convolution\.", r"up.\1.block."),
        (r"_classify\._linears\.", "classifier."),
    ]
]


def _authors_key_to_ours(key: str) -> str:
    """Our name for one of the authors' keys; unknown keys are kept so strict loading names them."""
    if match := _AUTHORS_BLOCK.fullmatch(key):
        stage, block, part, leaf = match.groups()
        parts = _DEPTHWISE_PARTS if stage == "1" else _INVERTED_PARTS
        if part in parts:
            # torchvision counts the stem as features[0]; our stage list starts after it.
            return f"stages.{int(stage) - 1}.{block}.{parts[part]}.{leaf}"
        return key
    for pattern, replacement in _AUTHORS_PREFIXES:
        if match := pattern.match(key):
            return match.expand(replacement) + key[match.end() :]
    return key
