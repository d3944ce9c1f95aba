"""IFN, the deeply supervised image fusion network (Zhang et al., 2020), as built by Open-CD.

One VGG-16 encoder (shared by the two dates) gives features after the ReLUs at layer indices
3, 8, 15, 22 and 29: 64/128/256/512/512 channels at strides 1/2/4/8/16. The decoder starts from
the two deepest maps side by side and climbs back one level at a time: a stride-2 transposed
conv, concatenation with both dates' skip features, channel attention (from the second level
on), conv-PReLU-BN units, spatial attention and a BN. A 1x1 conv turns every level into one
change logit: the full-resolution one is the output; the four coarser ones (strides 16, 8, 4
and 2) are deeply supervised during training.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from cdkd.models.backbones import tapped_features, vgg16_features
from cdkd.models.base import ChangeModel
from cdkd.models.layers import ChannelAttention, ConvNormAct
from cdkd.models.registry import ModelInfo, register_model

#: Output widths of VGG-16's 3x3 convolutions, one tuple per stage (a max-pool between stages).
#: Encoder layers whose outputs feed the decoder (the last ReLU of each stage).
ENCODER_TAPS = (3, 8, 15, 22, 29)
#: Channel widths of each decoder level's conv units, deepest level first. A level's input is
#: the upsampled previous level next to both dates' skip features (the deepest: both dates).
LEVEL_WIDTHS = (
    (1024, 512, 512),
    (1536, 512, 256, 256),
    (768, 256, 128, 128),
    (384, 128, 64, 64),
    (192, 64, 32, 16),
)
#: Squeeze ratio of the channel attention's hidden layer.
ATTENTION_RATIO = 8


class SpatialAttention(nn.Module):
    """Per-pixel gate in (0, 1): a 7x7 conv over the channel-wise mean and maximum."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat((x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)), dim=1)
        return torch.sigmoid(self.conv(pooled))


class FusionLevel(nn.Module):
    """One decoder level: optional channel attention, conv-PReLU-BN units, spatial attention, BN.

    Args:
        widths: input width followed by the output width of each conv unit.
        channel_attention: gate the input channels first (every level but the deepest).
    """

    def __init__(self, widths: Sequence[int], channel_attention: bool) -> None:
        super().__init__()
        self.channel_attention = (
            ChannelAttention(widths[0], ATTENTION_RATIO) if channel_attention else None
        )
        # Each unit: 3x3 conv (with bias), PReLU, then BN.
        self.convs = nn.Sequential(
            *(
                ConvNormAct(c_in, c_out, 3, bias=True, act="prelu", act_first=True)
                for c_in, c_out in itertools.pairwise(widths)
            )
        )
        self.spatial_attention = SpatialAttention()
        self.norm = nn.BatchNorm2d(widths[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channel_attention is not None:
            x = self.channel_attention(x) * x
        x = self.convs(x)
        return self.norm(self.spatial_attention(x) * x)


@register_model(
    "ifn",
    info=ModelInfo(
        "CNN",
        "VGG-16",
        35.995,
        315.925,
        pretrained="timm vgg16.tv_in1k (ImageNet; frozen when loaded)",
        distill_target="the 1-channel change logit at full resolution",
    ),
)
class IFN(ChangeModel):
    """IFN with a one-channel change logit at full input resolution (BCE).

    A shared VGG-16 encodes both dates; a five-level decoder fuses their features from stride 16
    up to full resolution with channel and spatial attention, each level ending in a one-channel
    side output (see the module doc). The student distils what :meth:`forward` returns: the
    full-resolution change logit of the last level (Open-CD's decode head). Input height and
    width must be multiples of 16.

    Encoder freezing: the reference always loads ImageNet VGG-16 weights and keeps the encoder
    frozen (in eval mode, which changes nothing for a VGG without BN or dropout). Here the
    encoder is frozen when its pretrained weights are loaded (:mod:`cdkd.models.pretrained`
    does that and logs it): a frozen random encoder would be useless, so a randomly
    initialised one is trained with the rest.

    The four side-output convs (strides 16, 8, 4 and 2) are built in every configuration: the
    reference computes them inside its network and Table II counts them (35.994813 M). They
    are run, and returned from :meth:`forward_with_aux` for deep supervision, only with
    ``aux_heads=True``; otherwise they are frozen, like the modules the reference builds but
    never runs (``ca1``, ``bn_ca1``, ``bn_ca2``, kept in :attr:`unused` so that the count
    matches): parameters that get no gradient would trip data-parallel training's
    unused-parameter check if left trainable.

    Args:
        aux_heads: return the four side outputs from :meth:`forward_with_aux`.
    """

    feature_module = "head"
    out_channels = 1

    def __init__(self, aux_heads: bool = False) -> None:
        super().__init__()
        self.aux_heads = aux_heads
        self.encoder = vgg16_features(batch_norm=False)
        self.levels = nn.ModuleList(
            FusionLevel(widths, channel_attention=index > 0)
            for index, widths in enumerate(LEVEL_WIDTHS)
        )
        coarse = [widths[-1] for widths in LEVEL_WIDTHS[:-1]]
        self.upsample = nn.ModuleList(nn.ConvTranspose2d(w, w, 2, stride=2) for w in coarse)
        self.side_heads = nn.ModuleList(nn.Conv2d(w, 1, kernel_size=1) for w in coarse)
        self.head = nn.Conv2d(LEVEL_WIDTHS[-1][-1], 1, kernel_size=1)
        deepest = LEVEL_WIDTHS[0][0]
        self.unused = nn.ModuleDict(
            {
                "ca1": ChannelAttention(deepest, ATTENTION_RATIO),
                "bn_ca1": nn.BatchNorm2d(deepest),
                "bn_ca2": nn.BatchNorm2d(LEVEL_WIDTHS[1][0]),
            }
        )
        self.unused.requires_grad_(False)
        if not aux_heads:
            self.side_heads.requires_grad_(False)

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features at the tap layers, shallowest first."""
        return tapped_features(self.encoder, x, ENCODER_TAPS)

    def _decode(self, x1: torch.Tensor, x2: torch.Tensor) -> list[torch.Tensor]:
        """Output features of every decoder level, deepest first."""
        pairs = list(zip(self._encode(x1), self._encode(x2), strict=True))
        x = torch.cat(pairs[-1], dim=1)
        levels = []
        for index, level in enumerate(self.levels):
            if index:
                x = torch.cat((self.upsample[index - 1](x), *pairs[-1 - index]), dim=1)
            x = level(x)
            levels.append(x)
        return levels

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return self.head(self._decode(x1, x2)[-1])

    def forward_with_aux(
        self, x1: torch.Tensor, x2: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Full-resolution logits plus, with ``aux_heads``, the side logits at strides 16..2."""
        levels = self._decode(x1, x2)
        logits = self.head(levels[-1])
        if not self.aux_heads:
            return logits, []
        return logits, [side(x) for side, x in zip(self.side_heads, levels[:-1], strict=True)]
