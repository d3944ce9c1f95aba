"""LightCDNet (Xing et al., GRSL 2023), the "small" network as Open-CD builds it for JL1-CD.

Early fusion: a shared stem (3x3 stride-2 conv, channel LayerNorm with Open-CD's eps 1e-6,
GELU) and a shared ShuffleNetV2 fusion block (1x1 up to 96 channels, four ShuffleNetV2 units,
1x1 back to 24, plus a residual) process each date; a squeeze-style time attention gates both
dates from their joint global context, and a channel shuffle and a 1x1 conv merge them into one
24-channel map at stride 2. One stream continues through three ShuffleNetV2 stages (48, 96, 192
channels; 4, 8 and 4 units; stride 2 at each stage's first unit), each followed by two rounds
of criss-cross attention. A convolutional FPN (48 channels, no normalisation) over the fused
map and the three stages, a 1x1 conv-BN-ReLU per level summed at stride 2, and a 1x1 classifier
give the 2-channel logits at half resolution. An FCN head on the fused map is a training-only
auxiliary output.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from timm.layers import LayerNorm2d
from torch import nn
from torchvision.models.shufflenetv2 import InvertedResidual, channel_shuffle

from cdkd.models.base import ChangeModel
from cdkd.models.layers import ConvNormAct, PlainFPN, resize
from cdkd.models.registry import ModelInfo, register_model

#: Width of the stem and of the fused stride-2 map.
STEM_CHANNELS = 24
#: The fusion block widens the stem features by this factor and runs this many units there.
FUSION_EXPANSION = 4
FUSION_UNITS = 4
#: Widths and number of ShuffleNetV2 units of the three stages ("small" network).
STAGE_CHANNELS = (48, 96, 192)
STAGE_UNITS = (4, 8, 4)
#: Criss-cross attention passes after each stage (one shared module, applied repeatedly).
CCA_RECURRENCE = 2
#: Width of the FPN and of the head.
FPN_CHANNELS = 48


def _units(in_channels: int, out_channels: int, count: int, stride: int) -> nn.Sequential:
    """``count`` ShuffleNetV2 units, the first one with ``stride``."""
    units = [InvertedResidual(in_channels, out_channels, stride)]
    units += [InvertedResidual(out_channels, out_channels, 1) for _ in range(count - 1)]
    return nn.Sequential(*units)


class CrissCrossAttention(nn.Module):
    """Criss-cross attention (CCNet), applied ``recurrence`` times with the same weights.

    Each pixel attends to the pixels of its row and column (itself counted once), with 1x1
    query/key projections to C/8 channels and a 1x1 value projection; the result is scaled by
    a learnt ``gamma`` (zero at init) and added to the input.
    """

    def __init__(self, channels: int, recurrence: int = CCA_RECURRENCE) -> None:
        super().__init__()
        self.query = nn.Conv2d(channels, channels // 8, 1)
        self.key = nn.Conv2d(channels, channels // 8, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(()))
        self.recurrence = recurrence

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        height = x.shape[-2]
        query, key, value = self.query(x), self.key(x), self.value(x)
        # Scores of pixel (h, w) against (i, w) in its column and (h, j) in its row.
        column = torch.einsum("bchw,bciw->bhwi", query, key)
        self_pixel = torch.eye(height, dtype=torch.bool, device=x.device).view(1, height, 1, -1)
        column = column.masked_fill(self_pixel, float("-inf"))
        row = torch.einsum("bchw,bchj->bhwj", query, key)
        weights = torch.softmax(torch.cat((column, row), dim=-1), dim=-1)
        out = torch.einsum("bciw,bhwi->bchw", value, weights[..., :height])
        out = out + torch.einsum("bchj,bhwj->bchw", value, weights[..., height:])
        return self.gamma * out + x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.recurrence):
            x = self._attend(x)
        return x


class TimeAttention(nn.Module):
    """Gates each date by a sigmoid of an MLP over both dates' pooled features (x * g + x)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = max(channels // 16, 8)
        self.mlp = nn.Sequential(
            *ConvNormAct(2 * channels, hidden), nn.Conv2d(hidden, 2 * channels, 1, bias=False)
        )

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = torch.cat((x1, x2), dim=1).mean(dim=(2, 3), keepdim=True)
        gate1, gate2 = torch.sigmoid(self.mlp(pooled)).chunk(2, dim=1)
        return x1 * gate1 + x1, x2 * gate2 + x2


class DateFusion(nn.Module):
    """Per-date residual ShuffleNetV2 block, time attention, then shuffle-and-merge to one map."""

    def __init__(self, channels: int = STEM_CHANNELS) -> None:
        super().__init__()
        wide = FUSION_EXPANSION * channels
        self.expand = ConvNormAct(channels, wide)
        self.units = _units(wide, wide, FUSION_UNITS, stride=1)
        self.reduce = ConvNormAct(wide, channels)
        self.time_attention = TimeAttention(channels)
        self.merge = ConvNormAct(2 * channels, channels)

    def _single(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.reduce(self.units(self.expand(x)))

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.time_attention(self._single(x1), self._single(x2))
        return self.merge(channel_shuffle(torch.cat((x1, x2), dim=1), 2))


@register_model(
    "lightcdnet_s",
    info=ModelInfo(
        "CNN",
        "CNN",
        0.342,
        6.995,
        distill_target="the decode head's 2-channel logits at 1/2 resolution",
    ),
)
class LightCDNet(ChangeModel):
    """LightCDNet-s with 2-channel (unchanged, changed) logits at half the input resolution.

    The dates meet right after the stem (see the module doc); a ShuffleNetV2 stream with
    criss-cross attention, a plain FPN over four levels and the DS-FPN head follow. ``forward``
    returns the decode head's logits, which the student distils; the auxiliary FCN head is
    never distilled, as in the official code.

    Open-CD keeps its stage outputs by indices into a list that also holds the attention
    modules, so the features it passes on are: stage 1 after its last unit (before the
    attention), stage 2 after its 7th of 8 units, stage 3 after its 2nd of 4 units. This model
    takes the same features. Stage 3's last two units and its attention therefore never
    affect the output; they are built (their parameters count towards the size, and Open-CD
    checkpoints keep them) but not run, so the measured MACs are slightly below Open-CD's,
    which runs them and discards the result. Input sides must be multiples of 16.

    Args:
        aux_heads: build the training-only FCN head (3x3 conv-BN-ReLU and a 1x1 classifier
            on the fused stride-2 map; Open-CD weights its cross-entropy by 0.4).
    """

    feature_module = "classifier"
    out_channels = 2

    def __init__(self, aux_heads: bool = False) -> None:
        super().__init__()
        self.stem = ConvNormAct(
            3, STEM_CHANNELS, 3, stride=2, norm=functools.partial(LayerNorm2d, eps=1e-6), act="gelu"
        )
        self.fusion = DateFusion(STEM_CHANNELS)
        widths = (STEM_CHANNELS, *STAGE_CHANNELS)
        self.stages = nn.ModuleList(
            _units(c_in, c_out, count, stride=2)
            for c_in, c_out, count in zip(widths[:-1], STAGE_CHANNELS, STAGE_UNITS, strict=True)
        )
        self.attention = nn.ModuleList(CrissCrossAttention(c) for c in STAGE_CHANNELS)
        # Units run before the feature is taken: the last one in stage 1, one fewer per stage.
        self.taps = [count - stage for stage, count in enumerate(STAGE_UNITS)]
        self.fpn = PlainFPN(widths, FPN_CHANNELS)
        self.scale_heads = nn.ModuleList(ConvNormAct(FPN_CHANNELS, FPN_CHANNELS) for _ in widths)
        self.classifier = nn.Conv2d(FPN_CHANNELS, self.out_channels, 1)
        self.aux_head = (
            nn.Sequential(
                ConvNormAct(STEM_CHANNELS, STEM_CHANNELS, 3),
                nn.Conv2d(STEM_CHANNELS, self.out_channels, 1),
            )
            if aux_heads
            else None
        )

    def _features(self, x1: torch.Tensor, x2: torch.Tensor) -> list[torch.Tensor]:
        """The fused stride-2 map and the three stage features Open-CD passes on."""
        x = self.fusion(self.stem(x1), self.stem(x2))
        features = [x]
        last = len(self.stages) - 1
        for stage, (units, attention, tap) in enumerate(
            zip(self.stages, self.attention, self.taps, strict=True)
        ):
            x = units[:tap](x)
            features.append(x)
            if stage < last:
                x = attention(units[tap:](x))
        return features

    def _decode(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        levels = self.fpn(features)
        out = self.scale_heads[0](levels[0])
        for head, level in zip(self.scale_heads[1:], levels[1:], strict=True):
            out = out + resize(head(level), out.shape[-2:])
        return self.classifier(out)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return self._decode(self._features(x1, x2))

    def forward_with_aux(
        self, x1: torch.Tensor, x2: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Main logits, plus the FCN head's logits on the fused map when it is built."""
        features = self._features(x1, x2)
        aux = [self.aux_head(features[0])] if self.aux_head is not None else []
        return self._decode(features), aux
