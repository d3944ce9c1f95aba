"""Small building blocks that several networks of the zoo share."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResidualBlock(nn.Module):
    """Conv3x3-BN-ReLU-conv-BN, plus the first conv's output, then ReLU.

    SNUNet's block uses a biased 3x3 second conv (the defaults); HANet's feature-extraction
    cell a 1x1 one without bias (``kernel2=1, bias2=False``).
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel2: int = 3, bias2: bool = True
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(out_channels)
        padding = kernel2 // 2
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel2, padding=padding, bias=bias2)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.conv1(x)
        x = self.bn2(self.conv2(F.relu(self.bn1(shortcut))))
        return F.relu(x + shortcut)
