"""STANet (Chen & Shi, 2020) in its Base form, as built by Open-CD for the JL1-CD benchmark.

A shared ResNetV1c-18 encodes each date into four levels (strides 4 to 32). A feature-pyramid
head, also shared, projects every level to 96 channels with a 1x1 conv-BN-ReLU, resizes them to
1/4 resolution, concatenates them (384 channels) and fuses them with two 3x3 conv-BN-ReLU units
(384 -> 256 -> 256, element-wise dropout 0.5 in between). "Base" means the spatio-temporal
self-attention module (BAM/PAM) is left out. The network's output is the per-pixel Euclidean
distance between the two dates' 256-channel embeddings: a metric map trained with the
batch-balanced contrastive loss (loss kind ``bcl``), where a distance above 1 means "changed".
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cdkd.models.backbones import resnet_v1c
from cdkd.models.base import ChangeModel
from cdkd.models.layers import ConvNormAct, concat_resized, fan_out_init
from cdkd.models.registry import ModelInfo, register_model

#: Channels of ResNet-18's four stages and the width each is projected to.
LEVEL_CHANNELS = (64, 128, 256, 512)
LATERAL_CHANNELS = 96
#: Width of the embedding whose per-pixel distance between the dates is the output.
EMBED_CHANNELS = 256
#: Element-wise dropout between the two fusion convs.
FUSE_DROPOUT = 0.5
#: A distance above this is a change (Open-CD's ``distance_threshold``).
DISTANCE_THRESHOLD = 1.0


class Distance(nn.Module):
    """Per-pixel Euclidean distance between two ``[B, C, H, W]`` embeddings, ``[B, 1, H, W]``."""

    def forward(self, e1: torch.Tensor, e2: torch.Tensor) -> torch.Tensor:
        # pairwise_distance adds 1e-6 to the difference, keeping the gradient finite at 0.
        distance = F.pairwise_distance(e1.movedim(1, -1), e2.movedim(1, -1), keepdim=True)
        return distance.movedim(-1, 1)


@register_model(
    "stanet_base",
    info=ModelInfo(
        "CNN",
        "ResNet-18",
        12.764,
        70.311,
        pretrained="timm resnet18d (ImageNet), loaded into ResNetV1c-18",
        distill_target="the 1-channel distance map at 1/4 resolution",
    ),
)
class STANet(ChangeModel):
    """STANet-Base: a Siamese metric network whose output is a distance map.

    ``forward`` returns the distance ``[B, 1, H/4, W/4]`` between the dates' embeddings; it is
    what the task loss (``bcl``) and the student's distillation term see, so a STANet teacher
    hands its distance map to a STANet student. :meth:`change_logit` shifts it by the decision
    threshold (``distance - 1``), which makes :meth:`predict` (``distance > 1``), evaluation,
    O-P routing and distillation against a 2-channel model work as for any other network.

    Deliberate deviation: Open-CD thresholds the 1/4-resolution distance map and then resizes
    the resulting +-100 map to the label size; here the distance map is resized first and then
    thresholded (the usual path for every model), which can move a boundary by a pixel.

    STANet has no classification layer: its feature map (:meth:`forward_features`) is the
    difference ``e1 - e2`` of the dates' embeddings, whose per-pixel norm is the output.
    """

    feature_module = "distance"
    out_channels = 1
    output_space = "distance"

    def __init__(self) -> None:
        super().__init__()
        self.backbone = resnet_v1c(18, out_indices=(1, 2, 3, 4))
        # Every conv-BN-ReLU has mmcv's ConvModule init (Kaiming, fan-out).
        self.lateral = nn.ModuleList(
            fan_out_init(ConvNormAct(c, LATERAL_CHANNELS)) for c in LEVEL_CHANNELS
        )
        self.fuse = nn.Sequential(
            fan_out_init(ConvNormAct(LATERAL_CHANNELS * len(LEVEL_CHANNELS), EMBED_CHANNELS, 3)),
            nn.Dropout(FUSE_DROPOUT),
            fan_out_init(ConvNormAct(EMBED_CHANNELS, EMBED_CHANNELS, 3)),
        )
        self.distance = Distance()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The ``[B, 256, H/4, W/4]`` embedding of one date."""
        levels = self.backbone(x)
        return self.fuse(concat_resized(self.lateral, levels, levels[0].shape[-2:]))

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        # Each date on its own, so training-mode BN statistics are per date as upstream.
        distance: torch.Tensor = self.distance(self.embed(x1), self.embed(x2))
        return distance

    def feature_input(self, args: tuple[Any, ...]) -> torch.Tensor:
        """The embeddings' difference ``e1 - e2`` (the distance is its per-pixel norm)."""
        difference: torch.Tensor = args[0] - args[1]
        return difference

    @property
    def feature_channels(self) -> int:
        return EMBED_CHANNELS

    def change_logit(self, logits: torch.Tensor) -> torch.Tensor:
        """``distance - 1``: positive where the dates are farther apart than the threshold."""
        return logits - DISTANCE_THRESHOLD
