"""SNUNet-CD (Fang et al., GRSL 2021): a Siamese nested U-Net with ensemble channel attention.

A shared five-level encoder (widths 16, 32, 64, 128 and 256 for the c16 model; max-pool between
levels) runs on both dates. The UNet++ decoder grid is dense: node ``(i, j)`` (level ``i``, column
``j >= 1``) sees both dates' level-``i`` encoder features, every earlier node of its level and the
node ``(i + 1, j - 1)`` brought up by a 2x2 stride-2 transposed conv. Column 0 of the grid below
level 0 is the second date's encoder, so the first date is encoded down to level 3 only and the
bottleneck comes from the second date alone (as in the authors' and Open-CD's code).

The ensemble channel attention module (ECAM) weighs the four full-resolution nodes: a channel
attention on their sum (reduction 4) is added to each of them, the result is multiplied by a
channel attention of their concatenation (reduction 16), and Open-CD's FCN head without convs
(Dropout2d 0.1 and a 1x1 conv 64 -> 2) gives the logits, trained with 2-class cross-entropy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cdkd.models.base import ChangeModel
from cdkd.models.layers import (
    ChannelAttention,
    ResidualBlock,
    classifier,
    fan_out_init,
    init_classifier,
    pad_like,
)
from cdkd.models.registry import ModelInfo, register_model

#: Number of encoder levels (four pooling steps).
LEVELS = 5
#: Number of full-resolution decoder nodes that ECAM ensembles.
ENSEMBLE = LEVELS - 1
#: Channel-attention reductions of ECAM: on the sum of the nodes and on their concatenation.
INTRA_REDUCTION = 4
INTER_REDUCTION = 16


@register_model(
    "snunet_c16",
    info=ModelInfo(
        "CNN",
        "CNN",
        3.012,
        46.921,
        distill_target="the FCN head's 2-channel logits at full resolution",
    ),
    base_channels=16,
)
class SNUNet(ChangeModel):
    """SNUNet-CD with ECAM and a 2-channel (unchanged, changed) output at full resolution.

    ``forward`` returns the FCN head's logits, which are also what the student distils. The
    layout follows Open-CD's ``SNUNet_ECAM`` and its init (Kaiming-normal convs, fan-out; the
    classifier drawn from N(0, 0.01) with zero bias); the one addition is that odd input sides
    are allowed (the upsampled nodes are edge-padded to their skip's size).

    Args:
        base_channels: width of level 0; level ``i`` has ``base_channels * 2**i`` channels.
    """

    feature_module = "head"
    out_channels = 2

    def __init__(self, base_channels: int = 16) -> None:
        super().__init__()
        widths = [base_channels * 2**level for level in range(LEVELS)]
        self.encoder = nn.ModuleList(
            ResidualBlock(c_in, c_out)
            for c_in, c_out in zip([3, *widths[:-1]], widths, strict=True)
        )
        # up[level - 1][column] lifts node (level, column) to level - 1.
        self.up = nn.ModuleList(
            nn.ModuleList(
                nn.ConvTranspose2d(widths[level], widths[level], 2, stride=2)
                for _ in range(LEVELS - level)
            )
            for level in range(1, LEVELS)
        )
        # nodes[level][column - 1] computes node (level, column): both dates' skips, ``column - 1``
        # earlier nodes of the level and the upsampled node from below.
        self.nodes = nn.ModuleList(
            nn.ModuleList(
                ResidualBlock(widths[level] * (column + 1) + widths[level + 1], widths[level])
                for column in range(1, LEVELS - level)
            )
            for level in range(LEVELS - 1)
        )
        width = widths[0]
        self.intra_attention = ChannelAttention(width, INTRA_REDUCTION)
        self.inter_attention = ChannelAttention(width * ENSEMBLE, INTER_REDUCTION)
        self.head = classifier(width * ENSEMBLE, self.out_channels)
        fan_out_init(self)
        init_classifier(self.head[-1])

    def _encode(self, x: torch.Tensor, levels: int) -> list[torch.Tensor]:
        """Features of the first ``levels`` encoder levels."""
        features = [self.encoder[0](x)]
        for block in self.encoder[1:levels]:
            features.append(block(F.max_pool2d(features[-1], kernel_size=2, stride=2)))
        return features

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        skips1 = self._encode(x1, LEVELS - 1)
        skips2 = self._encode(x2, LEVELS)
        # grid[level] holds the nodes of that level, column by column; column 0 is date 2's.
        grid = [[skip] for skip in skips2]
        for column in range(1, LEVELS):
            for level in range(LEVELS - column):
                up = self.up[level][column - 1]
                below = pad_like(up(grid[level + 1][column - 1]), skips1[level])
                inputs = [skips1[level], *grid[level], below]
                grid[level].append(self.nodes[level][column - 1](torch.cat(inputs, dim=1)))
        top = grid[0][1:]
        ensemble = torch.cat(top, dim=1)
        intra = self.intra_attention(torch.stack(top).sum(dim=0))
        fused = self.inter_attention(ensemble) * (ensemble + intra.repeat(1, ENSEMBLE, 1, 1))
        return self.head(fused)
