"""Backbones shared by several networks, built on timm and segmentation-models-pytorch.

Every builder starts from random initialisation; :mod:`cdkd.models.pretrained` loads the
released weights into them afterwards.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import segmentation_models_pytorch as smp
import timm
import torch
from torch import nn


def resnet_v1c(depth: int = 18, out_indices: Sequence[int] = (1, 2, 3, 4)) -> nn.Module:
    """mmseg's ResNetV1c (three 3x3 convolutions in the stem) as a timm feature extractor.

    Returns a module mapping an image to the list of stage outputs ``out_indices`` (1..4 at
    strides 4..32; channels 64/128/256/512 for depth 18). Stages after the last requested
    one are not built, so ``out_indices=(1, 2, 3)`` is BIT's three-stage network.

    Its pretrained weights are timm's ImageNet ``resnet<depth>d`` (the same deep stem and
    tensors, its average-pooling shortcut having no parameters) or mmseg's ``resnet18_v1c``.
    """
    return timm.create_model(
        f"resnet{depth}",
        stem_type="deep",
        stem_width=32,
        features_only=True,
        out_indices=tuple(out_indices),
    )


def mix_transformer(variant: str = "mit_b0") -> nn.Module:
    """SegFormer's MiT encoder (``mit_b0`` ... ``mit_b5``) from segmentation-models-pytorch.

    Its stages are the attributes ``patch_embed1..4``, ``block1..4`` and ``norm1..4``, so a
    network can run them one by one (e.g. to exchange features between dates in between).
    """
    return smp.encoders.get_encoder(variant, weights=None)


#: Convolution widths of VGG-16, stage by stage.
VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def vgg16_features(batch_norm: bool) -> nn.Sequential:
    """VGG-16's convolutional layers up to (not including) the last max-pool.

    The layers are numbered as in torchvision and timm (conv, [BN,] ReLU per convolution, a
    max-pool between stages): 30 modules without BN, 43 with. The network is built directly,
    which skips the 100 M-parameter classifier a full ``vgg16`` would initialise first. The
    keys are those of timm's and torchvision's ``features`` (ImageNet ``vgg16.tv_in1k`` /
    ``vgg16_bn.tv_in1k``, the torchvision release).
    """
    layers: list[nn.Module] = []
    in_channels = 3
    for index, widths in enumerate(VGG16_STAGES):
        if index:
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        for width in widths:
            layers.append(nn.Conv2d(in_channels, width, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU(inplace=True))
            in_channels = width
    return nn.Sequential(*layers)


def tapped_features(
    layers: nn.Sequential, x: torch.Tensor, taps: Collection[int]
) -> list[torch.Tensor]:
    """Run ``layers`` on ``x`` and return the outputs of the layers at ``taps``, in order."""
    outputs = []
    for index, layer in enumerate(layers):
        x = layer(x)
        if index in taps:
            outputs.append(x)
    return outputs
