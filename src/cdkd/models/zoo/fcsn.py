"""Fully convolutional change-detection U-Nets (Daudt et al., ICIP 2018), as built by Open-CD.

The three variants share one U-Net: a four-stage encoder (16, 32, 64 and 128 channels with
2, 2, 3 and 3 conv-BN-ReLU-dropout units, a max-pool after each stage) and a mirrored decoder of
stride-2 transposed-conv upsamplers and stride-1 transposed-conv units. They differ only in how
the two dates meet:

- ``early`` (FC-EF): the pair is stacked into one 6-channel image before the encoder;
- ``conc`` (FC-Siam-conc): a shared encoder runs on each date and every skip connection carries
  both dates' features side by side;
- ``diff`` (FC-Siam-diff): as ``conc``, but the skips carry ``|f1 - f2|``.

In the Siamese variants the decoder starts from the second date's bottleneck. Open-CD ends the
network with an FCN head without convs (Dropout2d 0.1 and a 1x1 conv 16 -> 2), trained with
2-class cross-entropy; the parameter counts match the JL1-CD paper's Table II exactly.
"""

from __future__ import annotations

import itertools
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from cdkd.errors import ConfigError
from cdkd.models.base import ChangeModel
from cdkd.models.layers import ConvNormAct, classifier, pad_like
from cdkd.models.registry import ModelInfo, register_model

Fusion = Literal["early", "conc", "diff"]

#: Encoder widths and number of conv units per stage (the decoder mirrors them).
WIDTHS = (16, 32, 64, 128)
DEPTHS = (2, 2, 3, 3)
#: Dropout2d probability after every conv unit of the U-Net.
UNIT_DROPOUT = 0.2


def _unit(in_channels: int, out_channels: int, transposed: bool = False) -> ConvNormAct:
    """3x3 conv (with bias, as upstream), BN, ReLU and channel dropout.

    The decoder's units use a stride-1 transposed conv, its "convolution" in the original design.
    """
    return ConvNormAct(
        in_channels, out_channels, 3, bias=True, dropout=UNIT_DROPOUT, transposed=transposed
    )


@register_model("fc_ef", info=ModelInfo("CNN", "CNN", 1.353, 12.976), fusion="early")
@register_model("fc_siam_conc", info=ModelInfo("CNN", "CNN", 1.548, 19.956), fusion="conc")
@register_model("fc_siam_diff", info=ModelInfo("CNN", "CNN", 1.352, 17.540), fusion="diff")
class FullyConvCD(ChangeModel):
    """FC-EF / FC-Siam-conc / FC-Siam-diff with a 2-channel (unchanged, changed) output.

    Args:
        fusion: how the dates are combined: ``early``, ``conc`` or ``diff`` (see module doc).
    """

    feature_module = "head"
    out_channels = 2

    def __init__(self, fusion: Fusion) -> None:
        super().__init__()
        if fusion not in ("early", "conc", "diff"):
            raise ConfigError(f"fusion must be 'early', 'conc' or 'diff', got {fusion!r}")
        self.fusion = fusion

        in_channels = 6 if fusion == "early" else 3
        self.encoder = nn.ModuleList()
        for width, depth in zip(WIDTHS, DEPTHS, strict=True):
            units: list[nn.Module] = [_unit(in_channels, width)]
            units += [_unit(width, width) for _ in range(depth - 1)]
            self.encoder.append(nn.Sequential(*units))
            in_channels = width

        skip_factor = 2 if fusion == "conc" else 1
        self.upsample = nn.ModuleList(
            nn.ConvTranspose2d(w, w, 3, stride=2, padding=1, output_padding=1) for w in WIDTHS
        )
        self.decoder = nn.ModuleList()
        for level, (width, depth) in enumerate(zip(WIDTHS, DEPTHS, strict=True)):
            # The last unit narrows to the next level's width; at level 0 it is a bare conv.
            out_width = WIDTHS[max(level - 1, 0)]
            channels = [width * (1 + skip_factor), *[width] * (depth - 1), out_width]
            pairs = list(itertools.pairwise(channels))
            units = [_unit(c_in, c_out, transposed=True) for c_in, c_out in pairs[:-1]]
            if level == 0:
                units.append(nn.ConvTranspose2d(*pairs[-1], kernel_size=3, padding=1))
            else:
                units.append(_unit(*pairs[-1], transposed=True))
            self.decoder.append(nn.Sequential(*units))

        self.head = classifier(WIDTHS[0], self.out_channels)

    def _encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per-stage features (the skips) and the pooled output of the last stage."""
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
            x = F.max_pool2d(x, kernel_size=2, stride=2)
        return skips, x

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        if self.fusion == "early":
            skips, x = self._encode(torch.cat((x1, x2), dim=1))
        else:
            skips1, _ = self._encode(x1)
            skips2, x = self._encode(x2)
            if self.fusion == "conc":
                skips = [torch.cat(pair, dim=1) for pair in zip(skips1, skips2, strict=True)]
            else:
                skips = [(a - b).abs() for a, b in zip(skips1, skips2, strict=True)]

        for level in reversed(range(len(WIDTHS))):
            skip = skips[level]
            up = pad_like(self.upsample[level](x), skip)
            x = self.decoder[level](torch.cat((up, skip), dim=1))
        return self.head(x)
