"""ChangeFormer as Open-CD builds it: a Siamese SegFormer (MiT encoder and all-MLP decoder).

This is not the ChangeFormerV6 of Bandara and Patel but Open-CD's "siamese SegFormer", the
network the JL1-CD paper's Table II counts. One MiT encoder (smp ``mit_b0``/``mit_b1``) encodes
both dates; at each of its four stages (strides 4 to 32) the two feature maps are concatenated
along the channels, and mmseg's SegFormer head decodes them: a 1x1 conv-BN-ReLU per level to 256
channels, bilinear resizing to stride 4, concatenation, a 1x1 conv-BN-ReLU fusion to 256, then
dropout and a 1x1 classifier to two logits (cross-entropy).

The MiT stages and the MLP fusion are shared with the Changer networks (:mod:`.changer`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cdkd.errors import ConfigError
from cdkd.models.backbones import mix_transformer
from cdkd.models.base import ChangeModel
from cdkd.models.layers import ConvNormAct, classifier, concat_resized
from cdkd.models.registry import ModelInfo, register_model

#: smp MiT variants a model may be built on.
MIT_VARIANTS = ("mit_b0", "mit_b1", "mit_b2", "mit_b3", "mit_b4", "mit_b5")


class MiTStages(nn.Module):
    """smp's MiT encoder, runnable one stage at a time.

    The encoder's ``patch_embedN``, ``blockN`` and ``normN`` modules become this module's own
    children under the same names, so the state dict reads like smp's encoder. Stage ``i``
    (0-based) maps a ``[B, C, H, W]`` map to ``[B, widths[i], H / s, W / s]`` with ``s`` 4 for
    the first stage and 2 for the others; the stage's LayerNorm is included.

    Args:
        variant: an smp MiT name (:data:`MIT_VARIANTS`).
    """

    def __init__(self, variant: str) -> None:
        super().__init__()
        if variant not in MIT_VARIANTS:
            raise ConfigError(f"MiT variant must be one of {list(MIT_VARIANTS)}, got {variant!r}")
        encoder = mix_transformer(variant)
        for name, module in encoder.named_children():
            self.add_module(name, module)
        #: Output channels of the four stages.
        self.widths: tuple[int, ...] = tuple(encoder.out_channels[2:])

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """MiT has no stem: the first stage's patch embedding reads the image."""
        return x

    def stage(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding, transformer blocks and LayerNorm of stage ``index`` (0-based)."""
        for part in ("patch_embed", "block", "norm"):
            x = self.get_submodule(f"{part}{index + 1}")(x)
        return x

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four stage outputs (strides 4, 8, 16 and 32)."""
        features = []
        for index in range(len(self.widths)):
            x = self.stage(index, x)
            features.append(x)
        return features


class MLPFusion(nn.Module):
    """SegFormer's all-MLP fusion of a feature pyramid at the resolution of its first level.

    Each level goes through its own 1x1 conv-BN-ReLU to ``channels`` and is resized to the first
    level's size; the concatenation is fused by a 1x1 conv-BN-ReLU to ``out_channels``.
    """

    def __init__(self, in_channels: Sequence[int], channels: int, out_channels: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(ConvNormAct(c, channels) for c in in_channels)
        self.fuse = ConvNormAct(channels * len(in_channels), out_channels)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.fuse(concat_resized(self.lateral, features, features[0].shape[-2:]))


class SegFormerHead(nn.Module):
    """:class:`MLPFusion` to ``channels`` followed by the classifier."""

    def __init__(self, in_channels: Sequence[int], channels: int, num_classes: int) -> None:
        super().__init__()
        self.fusion = MLPFusion(in_channels, channels, channels)
        self.classifier = classifier(channels, num_classes)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.fusion(features))


@register_model(
    "changeformer_b0",
    info=ModelInfo(
        "Transformer",
        "MiT-b0",
        3.847,
        11.380,
        pretrained="smp mit_b0 (ImageNet)",
        distill_target="the SegFormer head's 2-channel logits at 1/4 resolution",
    ),
    variant="mit_b0",
)
@register_model(
    "changeformer_b1",
    info=ModelInfo(
        "Transformer",
        "MiT-b1",
        13.941,
        26.422,
        pretrained="smp mit_b1 (ImageNet)",
        distill_target="the SegFormer head's 2-channel logits at 1/4 resolution",
    ),
    variant="mit_b1",
)
class ChangeFormer(ChangeModel):
    """Siamese SegFormer (Open-CD's ChangeFormer) with 2-channel logits at 1/4 resolution.

    Both dates pass through one MiT encoder (as a single batch: MiT has no batch statistics, so
    this equals two passes); the concatenated per-level features feed a SegFormer head whose
    output, the (unchanged, changed) logits at stride 4, is what :meth:`forward` returns and what
    a student distils. The encoder's stochastic depth (0.1) and the head's dropout (0.1) are
    Open-CD's; smp's MiT differs from mmseg's only in LayerNorm eps (1e-5 instead of 1e-6 in
    the patch embeddings and the attention's spatial reduction). The reference trains the head
    with a 10x learning rate and no weight decay on the norms; that is an optimizer setting,
    not part of the network.

    Args:
        variant: smp MiT variant, ``mit_b0`` or ``mit_b1`` for the Table II rows.
        channels: width of the decoder.
    """

    feature_module = "head.classifier"
    out_channels = 2

    def __init__(self, variant: str = "mit_b0", channels: int = 256) -> None:
        super().__init__()
        self.backbone = MiTStages(variant)
        self.head = SegFormerHead(
            [2 * width for width in self.backbone.widths], channels, self.out_channels
        )

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        batch = x1.shape[0]
        features = self.backbone(torch.cat((x1, x2)))
        pairs = [torch.cat((f[:batch], f[batch:]), dim=1) for f in features]
        return self.head(pairs)
