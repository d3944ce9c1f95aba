"""Backbones shared by several networks, built on timm and segmentation-models-pytorch.

Every builder starts from random initialisation; ``pretrained=True`` loads the library's
ImageNet weights (which needs a network connection).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import segmentation_models_pytorch as smp
import timm
import torch
from torch import nn


def resnet_v1c(
    depth: int = 18, out_indices: Sequence[int] = (1, 2, 3, 4), pretrained: bool = False
) -> nn.Module:
    """mmseg's ResNetV1c (three 3x3 convolutions in the stem) as a timm feature extractor.

    Returns a module mapping an image to the list of stage outputs ``out_indices`` (1..4 at
    strides 4..32; channels 64/128/256/512 for depth 18). Stages after the last requested
    one are not built, so ``out_indices=(1, 2, 3)`` is BIT's three-stage network.

    ``pretrained`` loads timm's ImageNet ``resnet<depth>d`` weights: the same deep stem and
    the same tensors, its average-pooling shortcut having no parameters (mmseg's own
    ``resnet18_v1c`` checkpoint is not on the timm hub).
    """
    model = timm.create_model(
        f"resnet{depth}",
        stem_type="deep",
        stem_width=32,
        features_only=True,
        out_indices=tuple(out_indices),
    )
    if pretrained:
        source = timm.create_model(f"resnet{depth}d", pretrained=True, num_classes=0)
        model.load_state_dict(avg_down_to_plain(source.state_dict(), model.state_dict()))
    return model


_SHORTCUT_RENAMES = ((".downsample.1.", ".downsample.0."), (".downsample.2.", ".downsample.1."))


def avg_down_to_plain(
    state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Map a ``resnet*d`` state dict (shortcut: pool, conv, bn) onto a plain shortcut.

    Only the keys ``target`` has are kept (e.g. the classifier and unbuilt stages go).
    """
    renamed = {}
    for key, value in state.items():
        for old, new in _SHORTCUT_RENAMES:
            if old in key:
                key = key.replace(old, new)
                break
        renamed[key] = value
    return {key: renamed[key] for key in target}


def mix_transformer(variant: str = "mit_b0", pretrained: bool = False) -> nn.Module:
    """SegFormer's MiT encoder (``mit_b0`` ... ``mit_b5``) from segmentation-models-pytorch.

    Its stages are the attributes ``patch_embed1..4``, ``block1..4`` and ``norm1..4``, so a
    network can run them one by one (e.g. to exchange features between dates in between).
    ``pretrained`` loads smp's ImageNet weights.
    """
    return smp.encoders.get_encoder(variant, weights="imagenet" if pretrained else None)


#: Convolution widths of VGG-16, stage by stage.
VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def vgg16_features(batch_norm: bool, pretrained: bool = False) -> nn.Sequential:
    """VGG-16's convolutional layers up to (not including) the last max-pool.

    The layers are numbered as in torchvision and timm (conv, [BN,] ReLU per convolution, a
    max-pool between stages): 30 modules without BN, 43 with. The network is built directly,
    which skips the 100 M-parameter classifier a full ``vgg16`` would initialise first;
    ``pretrained`` loads timm's ImageNet weights (``vgg16.tv_in1k`` / ``vgg16_bn.tv_in1k``, the
    torchvision release), which needs a network connection.
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
    features = nn.Sequential(*layers)
    if pretrained:
        source = timm.create_model("vgg16_bn" if batch_norm else "vgg16", pretrained=True)
        state = source.features.state_dict()
        features.load_state_dict({key: state[key] for key in features.state_dict()})
    return features


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
