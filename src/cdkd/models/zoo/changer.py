"""Changer (Fang et al., TGRS 2023; Open-CD's ChangerEx) on MiT-b0/b1, ResNet-18 and ResNeSt-50.

One backbone encodes both dates stage by stage, and after each stage a parameter-free
interaction layer exchanges part of the features between the dates before the next stage reads
them: nothing after stage 1, every second column after stage 2 (spatial exchange) and every
second channel after stages 3 and 4 (channel exchange). The head fuses each date's pyramid with
a SegFormer-style MLP, aligns the two dates with learned flows (flow dual-alignment fusion:
each date is warped by its flow and the other date subtracted), refines the result with a
MixFFN and classifies it into two logits at 1/4 resolution, trained with OHEM cross-entropy.

Backbones: smp ``mit_b0``/``mit_b1`` (exchanges after each stage's LayerNorm), mmseg's
ResNetV1c-18 (timm ``resnet18`` with the deep stem) and ResNeSt-50 (timm ``resnest50d``, the
same deep stem, average-pool shortcuts and radix-2 split attention as mmseg's ``ResNeSt``).
"""

from __future__ import annotations

from collections.abc import Sequence

import timm
import torch
import torch.nn.functional as F
from torch import nn

from cdkd.errors import ConfigError
from cdkd.models.backbones import resnet_v1c
from cdkd.models.base import ChangeModel
from cdkd.models.layers import ConvNormAct, classifier
from cdkd.models.registry import ModelInfo, register_model
from cdkd.models.zoo.changeformer import MIT_VARIANTS, MiTStages, MLPFusion

#: Interaction after each of the four backbone stages in Open-CD's ChangerEx.
CHANGER_EX = ("none", "spatial", "channel", "channel")
#: Features exchanged: every ``EXCHANGE_PERIOD``-th column or channel, starting at 0 (p = 1/2).
EXCHANGE_PERIOD = 2
#: Backbones built from timm (the MiT variants come from smp).
RESNETS = ("resnet18", "resnest50d")


class NoExchange(nn.Module):
    """Leave both dates' features as they are."""

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x1, x2


class SpatialExchange(nn.Module):
    """Swap the columns ``0, period, 2 * period, ...`` of two ``[B, C, H, W]`` maps."""

    def __init__(self, period: int = EXCHANGE_PERIOD) -> None:
        super().__init__()
        self.period = period

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        swap = torch.arange(x1.shape[-1], device=x1.device) % self.period == 0
        return torch.where(swap, x2, x1), torch.where(swap, x1, x2)


class ChannelExchange(nn.Module):
    """Swap the channels ``0, period, 2 * period, ...`` of two ``[B, C, H, W]`` maps."""

    def __init__(self, period: int = EXCHANGE_PERIOD) -> None:
        super().__init__()
        self.period = period

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        swap = (torch.arange(x1.shape[1], device=x1.device) % self.period == 0).view(-1, 1, 1)
        return torch.where(swap, x2, x1), torch.where(swap, x1, x2)


EXCHANGES: dict[str, type[nn.Module]] = {
    "none": NoExchange,
    "spatial": SpatialExchange,
    "channel": ChannelExchange,
}


class ResNetStages(nn.Module):
    """A timm ``features_only`` ResNet, runnable one stage at a time.

    The network's children (``conv1``, ``bn1``, ``act1``, ``maxpool``, ``layer1``-``layer4``)
    become this module's own under the same names, so the state dict reads like timm's.
    """

    STEM = ("conv1", "bn1", "act1", "maxpool")

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        for name, module in network.named_children():
            self.add_module(name, module)
        #: Output channels of the four stages.
        self.widths: tuple[int, ...] = tuple(network.feature_info.channels())

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """Deep stem and max-pool: stride 4."""
        for name in self.STEM:
            x = self.get_submodule(name)(x)
        return x

    def stage(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Residual stage ``index`` (0-based)."""
        return self.get_submodule(f"layer{index + 1}")(x)


def build_backbone(name: str) -> MiTStages | ResNetStages:
    """The stage-wise backbone ``name`` (an smp MiT variant or one of :data:`RESNETS`)."""
    if name in MIT_VARIANTS:
        return MiTStages(name)
    if name == "resnet18":
        return ResNetStages(resnet_v1c(18))
    if name == "resnest50d":
        network = timm.create_model(name, features_only=True, out_indices=(1, 2, 3, 4))
        return ResNetStages(network)
    raise ConfigError(f"Changer backbone must be one of {[*MIT_VARIANTS, *RESNETS]}, got {name!r}")


def warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample ``x`` at the identity grid shifted by ``flow`` (bilinear, zeros outside).

    ``flow`` is ``[B, 2, H, W]`` (x then y); as in the reference, it is divided by the map's
    width and height before being added to the normalised [-1, 1] grid (corners aligned).
    """
    _, _, height, width = x.shape
    ys = torch.linspace(-1.0, 1.0, height, device=x.device, dtype=flow.dtype)
    xs = torch.linspace(-1.0, 1.0, width, device=x.device, dtype=flow.dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    scale = flow.new_tensor([width, height]).view(1, 2, 1, 1)
    grid = torch.stack((grid_x, grid_y), dim=-1) + (flow / scale).permute(0, 2, 3, 1)
    return F.grid_sample(x, grid.type_as(x), mode="bilinear", align_corners=True)


class FlowDualAlignment(nn.Module):
    """Flow dual-alignment fusion (FDAF): predict a flow per date, warp, subtract the other date.

    The flows come from the concatenated dates through a depthwise 5x5 conv, instance norm
    (no affine), GELU and a 1x1 conv to four channels. The output is
    ``cat(warp(x1, f1) - x2, warp(x2, f2) - x1)``, twice the input width.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        both = 2 * channels
        self.flow = nn.Sequential(
            *ConvNormAct(both, both, 5, groups=both, bias=True, norm="instance", act="gelu"),
            nn.Conv2d(both, 4, kernel_size=1, bias=False),
        )

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        flow1, flow2 = self.flow(torch.cat((x1, x2), dim=1)).chunk(2, dim=1)
        return torch.cat((warp(x1, flow1) - x2, warp(x2, flow2) - x1), dim=1)


class MixFFN(nn.Module):
    """Residual SegFormer Mix-FFN on a feature map: 1x1, depthwise 3x3, GELU, 1x1."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1),
            nn.Conv2d(hidden, hidden, kernel_size=3, padding=1, groups=hidden),
            nn.GELU(),
            nn.Conv2d(hidden, channels, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)


class ChangerHead(nn.Module):
    """Changer's decode head: per-date MLP fusion, FDAF, Mix-FFN and a 1x1 classifier.

    Each date's pyramid is fused (shared weights, batch statistics per date) to
    ``channels / 2`` at the first level's resolution; FDAF brings the pair back to ``channels``.
    """

    def __init__(self, in_channels: Sequence[int], channels: int, num_classes: int) -> None:
        super().__init__()
        self.fusion = MLPFusion(in_channels, channels, channels // 2)
        self.align = FlowDualAlignment(channels // 2)
        self.refine = MixFFN(channels, channels)
        self.classifier = classifier(channels, num_classes)

    def forward(
        self, features1: Sequence[torch.Tensor], features2: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        x = self.align(self.fusion(features1), self.fusion(features2))
        return self.classifier(self.refine(x))


def _info(family: str, backbone: str, params: float, gflops: float, pretrained: str) -> ModelInfo:
    """Table II facts of one Changer row (every row distils the same head output)."""
    return ModelInfo(
        family,
        backbone,
        params,
        gflops,
        pretrained=pretrained,
        distill_target="the Changer head's 2-channel logits at 1/4 resolution",
    )


@register_model(
    "changer_b0",
    info=_info("Transformer", "MiT-b0", 3.457, 8.523, "smp mit_b0 (ImageNet)"),
    backbone="mit_b0",
)
@register_model(
    "changer_b1",
    info=_info("Transformer", "MiT-b1", 13.355, 23.306, "smp mit_b1 (ImageNet)"),
    backbone="mit_b1",
)
@register_model(
    "changer_r18",
    info=_info("CNN", "ResNet-18", 11.391, 23.820, "none (opt-in: timm resnet18d.ra2_in1k)"),
    backbone="resnet18",
)
@register_model(
    "changer_s50",
    info=_info("CNN", "ResNeSt-50", 26.693, 67.241, "none (opt-in: timm resnest50d.in1k)"),
    backbone="resnest50d",
    channels=256,
)
class Changer(ChangeModel):
    """ChangerEx with 2-channel (unchanged, changed) logits at 1/4 resolution.

    The backbone runs on each date separately (so batch-norm statistics stay per date, as in
    the reference) and the interaction layer after each stage feeds the next stage. The head's
    logits at stride 4 are what :meth:`forward` returns and what a student distils.

    Deviations: the MiT encoder is smp's, with mmseg's layers, parameters and stochastic depth
    (0.1), but LayerNorm eps 1e-5 instead of 1e-6 in the patch embeddings and the attention's
    spatial reduction. The reference trains the MiT models with a 10x head learning rate and no
    weight decay on the norms, which is an optimizer setting outside the network; its ResNet-18
    and ResNeSt-50 models start from random weights.

    Args:
        backbone: ``mit_b0``, ``mit_b1``, ``resnet18`` or ``resnest50d``.
        channels: width of the head (128; 256 for ResNeSt-50).
        exchanges: interaction after each stage: ``none``, ``spatial`` or ``channel``.
    """

    feature_module = "head.classifier"
    out_channels = 2

    def __init__(
        self,
        backbone: str = "mit_b0",
        channels: int = 128,
        exchanges: Sequence[str] = CHANGER_EX,
    ) -> None:
        super().__init__()
        self.backbone = build_backbone(backbone)
        if len(exchanges) != len(self.backbone.widths) or not set(exchanges) <= set(EXCHANGES):
            raise ConfigError(
                f"exchanges must name one of {sorted(EXCHANGES)} for each of the "
                f"{len(self.backbone.widths)} stages, got {list(exchanges)}"
            )
        self.exchanges = nn.ModuleList(EXCHANGES[kind]() for kind in exchanges)
        self.head = ChangerHead(self.backbone.widths, channels, self.out_channels)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.backbone.stem(x1), self.backbone.stem(x2)
        features1, features2 = [], []
        for index, exchange in enumerate(self.exchanges):
            x1, x2 = exchange(self.backbone.stage(index, x1), self.backbone.stage(index, x2))
            features1.append(x1)
            features2.append(x2)
        return self.head(features1, features2)
