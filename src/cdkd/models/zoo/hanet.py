"""HANet (Han et al., JSTARS 2023): a hierarchical attention network for change detection.

A shared encoder runs on each date: a stride-1 5x5 stem conv, then four feature-extraction cells
(conv3x3-BN-ReLU-conv1x1-BN plus the first conv's output, then ReLU) of widths 40, 80, 160 and
320, with 2x2 average pooling between them, so the scales are 1, 1/2, 1/4 and 1/8. At every
scale the two dates' features are stacked and fused by four parallel grouped 3x3 convs (groups
C/2) with dilations 1 to 4 and a 1x1 conv back to C channels. A hierarchical attention then adds
a channel self-attention branch (3x3 conv to 32 channels, BN, PReLU, channel attention, 3x3 conv
back, BN, PReLU) to an axial branch (column attention followed by row attention). The decoder
runs from the coarsest scale up, concatenating each scale's attended features with the bilinear
2x upsampling of the level below (480, 560 and finally 600 channels at full resolution), and a
1x1 conv reduces them to 80 channels. Open-CD's FCN head without convs (Dropout2d 0.1, 1x1 conv
80 -> 2) gives the logits, trained with 2-class cross-entropy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cdkd.models.base import ChangeModel
from cdkd.models.layers import (
    ConvNormAct,
    ResidualBlock,
    classifier,
    fan_out_init,
    init_classifier,
    resize,
)
from cdkd.models.registry import ModelInfo, register_model

#: Number of encoder scales.
SCALES = 4
#: Dilations of the parallel grouped convs that fuse the two dates at each scale.
DILATIONS = (1, 2, 3, 4)
#: Width of the channel self-attention branch.
CAM_CHANNELS = 32


class ChannelSelfAttention(nn.Module):
    """Channel-to-channel attention with a learned residual scale (zero at init).

    The affinity of two channels is the dot product of their maps; it is subtracted from each
    row's maximum before the softmax, so less similar channels get the larger weights.
    """

    def __init__(self) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(2)
        energy = flat @ flat.transpose(1, 2)
        energy = energy.amax(dim=-1, keepdim=True) - energy
        out = energy.softmax(dim=-1) @ flat
        return self.gamma * out.view_as(x) + x


class AxialAttention(nn.Module):
    """Self-attention along one image axis with a learned residual scale (zero at init).

    ``axis=-1`` attends along each row (across columns), ``axis=-2`` along each column.
    """

    def __init__(self, channels: int, axis: int) -> None:
        super().__init__()
        if axis not in (-1, -2):
            raise ValueError(f"axis must be -1 (rows) or -2 (columns), got {axis}")
        self.axis = axis
        self.query = nn.Conv2d(channels, channels, 1)
        self.key = nn.Conv2d(channels, channels, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def _lines(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` as one ``[C, L]`` sequence per line: ``[B * lines, C, L]``."""
        if self.axis == -2:
            x = x.transpose(-1, -2)
        b, c, lines, length = x.shape
        return x.permute(0, 2, 1, 3).reshape(b * lines, c, length)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (self._lines(proj(x)) for proj in (self.query, self.key, self.value))
        attention = (q.transpose(1, 2) @ k).softmax(dim=-1)
        out = v @ attention.transpose(1, 2)
        b, c, h, w = x.shape
        lines, length = (h, w) if self.axis == -1 else (w, h)
        out = out.view(b, lines, c, length).transpose(1, 2)
        if self.axis == -2:
            out = out.transpose(-1, -2)
        return self.gamma * out + x


class HierarchicalAttention(nn.Module):
    """Channel self-attention branch plus row-after-column axial attention on the same input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channel = nn.Sequential(
            *ConvNormAct(channels, CAM_CHANNELS, 3, bias=True, act="prelu"),
            ChannelSelfAttention(),
            *ConvNormAct(CAM_CHANNELS, channels, 3, bias=True, act="prelu"),
        )
        self.column = AxialAttention(channels, axis=-2)
        self.row = AxialAttention(channels, axis=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.channel(x) + self.row(self.column(x))


class TemporalFusion(nn.Module):
    """Fuse both dates at one scale: grouped dilated 3x3 convs in parallel, then a 1x1 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(2 * channels, channels, 3, padding=d, dilation=d, groups=channels // 2)
            for d in DILATIONS
        )
        self.merge = nn.Conv2d(len(DILATIONS) * channels, channels, 1)

    def forward(self, f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
        pair = torch.cat((f1, f2), dim=1)
        return self.merge(torch.cat([branch(pair) for branch in self.branches], dim=1))


@register_model(
    "hanet",
    info=ModelInfo(
        "CNN",
        "CNN",
        3.028,
        97.548,
        distill_target="the FCN head's 2-channel logits at full resolution",
    ),
    base_channels=40,
)
class HANet(ChangeModel):
    """HANet with a 2-channel (unchanged, changed) output at full resolution.

    ``forward`` returns the FCN head's logits, which are also what the student distils. The
    layout follows Open-CD's ``HAN`` and its init (Kaiming-normal convs, fan-out; the classifier
    drawn from N(0, 0.01) with zero bias). That backbone also builds four 3x3 convs its forward
    never calls; they are kept (``unused_convs``) because the paper's parameter count includes
    them. Deviation: the decoder upsamples each level to the exact size of the level above, so
    input sides need not be multiples of 8.

    Args:
        base_channels: width of the first scale; scale ``i`` has ``base_channels * 2**i``.
    """

    feature_module = "head"
    out_channels = 2

    def __init__(self, base_channels: int = 40) -> None:
        super().__init__()
        widths = [base_channels * 2**scale for scale in range(SCALES)]
        self.stem = nn.Conv2d(3, widths[0], 5, padding=2)
        self.encoder = nn.ModuleList(
            ResidualBlock(c_in, c_out, kernel2=1, bias2=False)
            for c_in, c_out in zip([widths[0], *widths[:-1]], widths, strict=True)
        )
        self.fusion = nn.ModuleList(TemporalFusion(width) for width in widths)
        self.attention = nn.ModuleList(HierarchicalAttention(width) for width in widths)
        self.reduce = nn.Conv2d(sum(widths), widths[1], 1)
        self.unused_convs = nn.ModuleList(
            nn.Conv2d(width, min(width, widths[1]), 3, padding=1) for width in widths
        )
        self.head = classifier(widths[1], self.out_channels)
        fan_out_init(self)
        init_classifier(self.head[-1])

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features at scales 1, 1/2, 1/4 and 1/8."""
        features = [self.encoder[0](self.stem(x))]
        for cell in self.encoder[1:]:
            features.append(cell(F.avg_pool2d(features[-1], kernel_size=2, stride=2)))
        return features

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        feats1, feats2 = self._encode(x1), self._encode(x2)
        levels = [
            attention(fusion(f1, f2))
            for attention, fusion, f1, f2 in zip(
                self.attention, self.fusion, feats1, feats2, strict=True
            )
        ]
        x = levels[-1]
        for attended in reversed(levels[:-1]):
            x = torch.cat((attended, resize(x, attended.shape[-2:])), dim=1)
        return self.head(self.reduce(x))
