"""Building blocks shared by the networks of the zoo.

The blocks that are ``nn.Sequential`` keep torch's numbered child names (``0`` the conv, then
the norm and activation in the order they run), which are the state-dict keys the released
checkpoints use; a network that needs a longer numbered run unpacks blocks into one
``nn.Sequential`` (``nn.Sequential(*ConvNormAct(...), other)``). Building a block draws from
the random generator exactly as the equivalent plain layers do, so a seeded network is
initialised the same whichever way it is written.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

#: Channel dropout before a 1x1 classifier (mmseg's decode-head default in these configs).
HEAD_DROPOUT = 0.1

NormLayer = Callable[[int], nn.Module]
ActLayer = Callable[[], nn.Module]
Norm = Literal["batch", "instance"]
Act = Literal["relu", "prelu", "gelu"]

_NORMS: dict[str, NormLayer] = {"batch": nn.BatchNorm2d, "instance": nn.InstanceNorm2d}
_ACTS: dict[str, ActLayer] = {
    "relu": functools.partial(nn.ReLU, inplace=True),
    "prelu": nn.PReLU,
    "gelu": nn.GELU,
}

M = TypeVar("M", bound=nn.Module)


class ConvNormAct(nn.Sequential):
    """A conv followed by an optional norm and activation (mmcv's ``ConvModule``).

    Children: ``0`` the conv, then the norm and the activation (``act_first`` swaps them, as
    IFN's and TinyCD's units do), then ``Dropout2d`` when ``dropout`` is set. Padding is
    ``kernel_size // 2``, which keeps the size of odd kernels at stride 1.

    Args:
        in_channels: input channels.
        out_channels: output channels (and the norm's width).
        kernel_size: square kernel side.
        stride: conv stride.
        groups: conv groups.
        bias: give the conv a bias (off by default: a norm usually follows).
        norm: ``batch``, ``instance``, a factory taking the width (e.g. a LayerNorm2d with
            its epsilon), or None.
        act: ``relu`` (in place), ``prelu``, ``gelu``, a factory, or None.
        act_first: run the activation before the norm.
        dropout: ``Dropout2d`` probability after the block (0: none).
        transposed: use a ``ConvTranspose2d`` (the decoder units of the FC-Siam U-Nets).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        *,
        stride: int = 1,
        groups: int = 1,
        bias: bool = False,
        norm: Norm | NormLayer | None = "batch",
        act: Act | ActLayer | None = "relu",
        act_first: bool = False,
        dropout: float = 0.0,
        transposed: bool = False,
    ) -> None:
        conv_cls = nn.ConvTranspose2d if transposed else nn.Conv2d
        conv = conv_cls(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=bias,
        )
        after: list[nn.Module] = []
        if norm is not None:
            after.append((_NORMS[norm] if isinstance(norm, str) else norm)(out_channels))
        if act is not None:
            activation = (_ACTS[act] if isinstance(act, str) else act)()
            after.insert(0 if act_first else len(after), activation)
        if dropout:
            after.append(nn.Dropout2d(dropout))
        super().__init__(conv, *after)


def classifier(channels: int, num_classes: int, dropout: float = HEAD_DROPOUT) -> nn.Sequential:
    """Channel dropout and a 1x1 conv to the class logits (mmseg's ``cls_seg``; keys ``1.*``)."""
    return nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(channels, num_classes, kernel_size=1))


def fan_out_init(module: M, zero_bias: bool = False) -> M:
    """Kaiming-normal (fan-out, ReLU gain) weights for every ``Conv2d`` in ``module``.

    mmcv's ``ConvModule`` initialisation; ``zero_bias`` also zeroes the conv biases as it
    does. Returns ``module``, so a block can be initialised where it is built (which keeps
    the random draws in the order of the reference's construction).
    """
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            if zero_bias and layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return module


def init_classifier(conv: nn.Conv2d) -> None:
    """Draw a classifier conv from N(0, 0.01) with zero bias (mmseg's decode-head init)."""
    nn.init.normal_(conv.weight, std=0.01)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def resize(x: torch.Tensor, size: Sequence[int], align_corners: bool = False) -> torch.Tensor:
    """Bilinear resize of a ``[B, C, H, W]`` map to ``size`` (``(h, w)``)."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


def concat_resized(
    layers: nn.ModuleList | Sequence[nn.Module],
    features: Sequence[torch.Tensor],
    size: Sequence[int],
) -> torch.Tensor:
    """Each feature through its own layer, bilinearly resized to ``size``, then concatenated.

    The all-MLP embedding of SegFormer-style heads (one 1x1 conv-BN-ReLU per level).
    """
    return torch.cat(
        [resize(layer(x), size) for layer, x in zip(layers, features, strict=True)], dim=1
    )


def pad_like(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Edge-pad ``x`` at the bottom and right to ``like``'s size.

    Pooling an odd side drops a row or column, so an upsampled map can be one short of its
    skip connection.
    """
    pad_w, pad_h = like.shape[-1] - x.shape[-1], like.shape[-2] - x.shape[-2]
    if pad_w or pad_h:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    return x


class ChannelAttention(nn.Module):
    """Sigmoid channel weights ``[B, C, 1, 1]`` from one two-layer MLP on avg- and max-pools.

    The MLP is two bias-free 1x1 convs with a ReLU between them, ``channels // reduction``
    wide (CBAM's channel attention, as SNUNet and IFN use it).
    """

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, channels // reduction, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels // reduction, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(F.adaptive_avg_pool2d(x, 1))
        peak = self.mlp(F.adaptive_max_pool2d(x, 1))
        return torch.sigmoid(avg + peak)


class PlainFPN(nn.Module):
    """FPN without normalisation: 1x1 laterals, nearest top-down sums, 3x3 output convs.

    Returns one ``channels``-wide map per input level, at that level's size.
    """

    def __init__(self, in_channels: Sequence[int], channels: int) -> None:
        super().__init__()
        self.laterals = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.smooth = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels
        )

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        levels = [lateral(f) for lateral, f in zip(self.laterals, features, strict=True)]
        for i in reversed(range(len(levels) - 1)):
            levels[i] = levels[i] + F.interpolate(
                levels[i + 1], size=levels[i].shape[-2:], mode="nearest"
            )
        return [smooth(level) for smooth, level in zip(self.smooth, levels, strict=True)]


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
