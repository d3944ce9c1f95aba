"""ChangeStar (Zheng et al., ICCV 2021) with a ResNet-18 body, as Open-CD builds it for JL1-CD.

A shared ResNetV1c-18 encodes each date; a segmentation body (FarSeg or UPerNet, without its
classifier) turns the four stages into a 128-channel map at stride 4, again per date with the
same weights. ChangeMixin then reads the two maps in a given order: their concatenation goes
through a 3x3 conv (256 -> 96, BN, ReLU) and a 1x1 classifier gives one change logit. Applied
to (t1, t2) it is the t1->t2 logit, applied to (t2, t1) with the same weights the t2->t1 one;
both are supervised with the same label.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from cdkd.errors import ConfigError
from cdkd.models.backbones import resnet_v1c
from cdkd.models.base import ChangeModel
from cdkd.models.layers import ConvNormAct, PlainFPN, classifier, resize
from cdkd.models.registry import ModelInfo, register_model

Body = Literal["farseg", "upernet"]

#: Output widths of the four ResNet-18 stages (strides 4, 8, 16, 32).
STAGE_CHANNELS = (64, 128, 256, 512)
#: Width of the segmentation body's output, at stride 4.
BODY_CHANNELS = 128
#: ChangeMixin's inner width d_c (one conv, N = 1).
MIXIN_CHANNELS = 96
#: FarSeg: width of the FPN and of the foreground-scene relation.
FPN_CHANNELS = 256
FSR_CHANNELS = 256
#: UPerNet: output sizes of the pyramid pooling branches on the stride-32 stage.
POOL_SCALES = (1, 2, 3, 6)


class FarSegBody(PlainFPN):
    """FarSeg's FPN, foreground-scene relation and light-weight decoder for one date.

    The FPN is a :class:`~cdkd.models.layers.PlainFPN` (no normalisation). The
    scene embedding is the global average of the stride-32 stage; per level it is encoded
    (1x1, ReLU, 1x1) and its dot product with the encoded content gives a sigmoid relation map
    that weights a re-encoding of the level. The decoder brings each level to stride 4 with
    3x3 conv-BN-ReLU units, each followed by a x2 bilinear upsampling (corners aligned), and
    averages the levels. Input sides must be multiples of 32.
    """

    def __init__(
        self,
        in_channels: Sequence[int] = STAGE_CHANNELS,
        fpn_channels: int = FPN_CHANNELS,
        fsr_channels: int = FSR_CHANNELS,
        channels: int = BODY_CHANNELS,
    ) -> None:
        super().__init__(in_channels, fpn_channels)
        levels = range(len(in_channels))
        self.scene_encoders = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(in_channels[-1], fsr_channels, 1),
                nn.ReLU(inplace=True),
                nn.Conv2d(fsr_channels, fsr_channels, 1),
            )
            for _ in levels
        )
        self.content_encoders = nn.ModuleList(
            ConvNormAct(fpn_channels, fsr_channels, 1) for _ in levels
        )
        self.reencoders = nn.ModuleList(ConvNormAct(fpn_channels, fsr_channels, 1) for _ in levels)
        # Level i sits at stride 4 * 2**i: i upsampling units (one plain unit at stride 4).
        self.decoders = nn.ModuleList()
        for level in levels:
            units: list[nn.Module] = []
            for unit in range(max(level, 1)):
                units.append(ConvNormAct(fsr_channels if unit == 0 else channels, channels, 3))
                if level > 0:
                    units.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True))
            self.decoders.append(nn.Sequential(*units))

    # The body extends the FPN and returns the fused map, not the FPN's levels.
    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        scene = features[-1].mean(dim=(2, 3), keepdim=True)
        decoded = []
        for i, level in enumerate(super().forward(features)):
            content = self.content_encoders[i](level)
            relation = torch.sigmoid((self.scene_encoders[i](scene) * content).sum(1, keepdim=True))
            decoded.append(self.decoders[i](relation * self.reencoders[i](level)))
        return sum(decoded) / len(decoded)


class UPerBody(nn.Module):
    """UPerNet's decoder (pyramid pooling on the last stage plus an FPN) for one date.

    Every conv is conv-BN-ReLU. The stride-32 stage is average-pooled to each of
    ``pool_scales``, reduced by a 1x1 conv, upsampled back and fused with the stage by a 3x3
    conv; the other stages get 1x1 laterals, bilinear top-down sums and 3x3 output convs;
    all levels are upsampled to stride 4, concatenated and fused by a 3x3 conv.
    """

    def __init__(
        self,
        in_channels: Sequence[int] = STAGE_CHANNELS,
        channels: int = BODY_CHANNELS,
        pool_scales: Sequence[int] = POOL_SCALES,
    ) -> None:
        super().__init__()
        top = in_channels[-1]
        self.pools = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), ConvNormAct(top, channels, 1))
            for scale in pool_scales
        )
        self.pool_fuse = ConvNormAct(top + len(pool_scales) * channels, channels, 3)
        self.laterals = nn.ModuleList(ConvNormAct(c, channels, 1) for c in in_channels[:-1])
        self.smooth = nn.ModuleList(ConvNormAct(channels, channels, 3) for _ in in_channels[:-1])
        self.fuse = ConvNormAct(len(in_channels) * channels, channels, 3)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        top = features[-1]
        pooled = [resize(branch(top), top.shape[-2:]) for branch in self.pools]
        levels = [lateral(f) for lateral, f in zip(self.laterals, features[:-1], strict=True)]
        levels.append(self.pool_fuse(torch.cat([top, *pooled], dim=1)))
        for i in reversed(range(len(levels) - 1)):
            levels[i] = levels[i] + resize(levels[i + 1], levels[i].shape[-2:])
        outs = [smooth(level) for smooth, level in zip(self.smooth, levels[:-1], strict=True)]
        outs.append(levels[-1])
        size = outs[0].shape[-2:]
        return self.fuse(torch.cat([outs[0], *(resize(o, size) for o in outs[1:])], dim=1))


_DISTILL_TARGET = (
    "the t1->t2 1-channel change logit at 1/4 resolution (the official MTKD code distils the "
    "t1->t2 and t2->t1 logits concatenated on the batch axis)"
)


@register_model(
    "changestar_farseg",
    info=ModelInfo(
        "CNN",
        "FarSeg (ResNet-18)",
        16.965,
        76.845,
        pretrained="timm resnet18d (ImageNet)",
        distill_target=_DISTILL_TARGET,
    ),
    body="farseg",
)
@register_model(
    "changestar_upernet",
    info=ModelInfo(
        "CNN",
        "UPerNet (ResNet-18)",
        13.952,
        55.634,
        pretrained="timm resnet18d (ImageNet)",
        distill_target=_DISTILL_TARGET,
    ),
    body="upernet",
)
class ChangeStar(ChangeModel):
    """ChangeStar 1x96: ResNetV1c-18, a FarSeg or UPerNet body, ChangeMixin, 1-channel logits.

    Both dates go through the shared backbone and body to 128-channel maps at stride 4;
    ChangeMixin (a 3x3 conv 256 -> 96 with BN and ReLU on the concatenated pair) and a 1x1
    classifier turn an ordered pair of maps into a change logit.

    ``forward`` returns the t1->t2 logit ``[B, 1, H/4, W/4]``: Open-CD's inference output
    (``inference_mode='t1t2'``) and what the student distils here. The official MTKD code
    distilled both directions, concatenated on the batch axis; only t1->t2 is distilled
    here, since it is the only one used at inference. With ``aux_heads=True``,
    :meth:`forward_with_aux` also returns the t2->t1 logit, trained with the main loss and
    weight 1 as Open-CD does. It comes from the same ChangeMixin and classifier applied to
    the dates in the other order, so it adds no parameters and no ``aux_*`` module.

    Deviation: Open-CD's head always computes both directions, also at inference, so Table
    II's computation includes a second ChangeMixin pass (3.6 G multiply-adds at 512x512) that
    ``forward`` skips.

    Args:
        body: segmentation body, ``farseg`` or ``upernet``.
        aux_heads: also return the t2->t1 logit from :meth:`forward_with_aux`.
    """

    feature_module = "classifier"
    out_channels = 1

    def __init__(self, body: Body, aux_heads: bool = False) -> None:
        super().__init__()
        if body not in ("farseg", "upernet"):
            raise ConfigError(f"body must be 'farseg' or 'upernet', got {body!r}")
        self.backbone = resnet_v1c(18)
        self.body = FarSegBody() if body == "farseg" else UPerBody()
        self.mixin = ConvNormAct(2 * BODY_CHANNELS, MIXIN_CHANNELS, 3, bias=True)
        self.classifier = classifier(MIXIN_CHANNELS, self.out_channels)
        self.aux_heads = aux_heads

    def _maps(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stride-4 body outputs of both dates (each date runs alone, as Open-CD's BN sees it)."""
        return self.body(self.backbone(x1)), self.body(self.backbone(x2))

    def _change(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """ChangeMixin and classifier reading the dates in the order ``first -> second``."""
        return self.classifier(self.mixin(torch.cat((first, second), dim=1)))

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return self._change(*self._maps(x1, x2))

    def forward_with_aux(
        self, x1: torch.Tensor, x2: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The t1->t2 logit, plus the t2->t1 logit when built with ``aux_heads=True``."""
        f1, f2 = self._maps(x1, x2)
        main = self._change(f1, f2)
        return main, [self._change(f2, f1)] if self.aux_heads else []
