"""CGNet, the change guiding network (Han et al., 2023), as built by Open-CD.

One VGG-16-BN encoder (``features[:42]``, shared by the two dates) gives 128/256/512/512-channel
maps at strides 2, 4, 8 and 16. At each stride the two dates are concatenated in the order
(t2, t1) and a 3x3 conv-BN-ReLU halves the channels. The deepest fused map, resized to stride 2,
goes through two 3x3 convs to a one-channel change prior. Change Guide Modules then refine the
decoder at strides 16, 8 and 4: a self-attention over all positions whose queries, keys and
values are scaled by ``1 + sigmoid(prior)``, added back through a learned gain that starts at
zero; after each, the map is upsampled x2, concatenated with the fused skip and reduced by a
conv-BN-ReLU. Two convs at stride 2 give the change logit, bilinearly upsampled to the input
size like the prior.
"""

from __future__ import annotations

import functools
import itertools

import torch
import torch.nn.functional as F
from torch import nn

from cdkd.models.backbones import tapped_features, vgg16_features
from cdkd.models.base import ChangeModel
from cdkd.models.layers import ConvNormAct, resize
from cdkd.models.registry import ModelInfo, register_model

#: VGG-16-BN layers kept: up to the BN of the last convolution (its ReLU is left out).
ENCODER_LAYERS = 42
#: Encoder layers whose outputs are fused: the last ReLU of stages 2-4 and the last BN of
#: stage 5. The reference slices the encoder just before those ReLUs, but they run in place
#: when the next slice starts, so its first three taps hold the activated values; the deepest
#: tap is never activated.
ENCODER_TAPS = (12, 22, 32, 41)
#: Channels of the fused maps at strides 2, 4, 8 and 16.
FUSED_WIDTHS = (128, 256, 512, 512)
#: Channels of the prior and final heads' hidden conv.
HEAD_WIDTH = 64
#: Query/key width of a Change Guide Module relative to its input.
QUERY_RATIO = 8

#: Bilinear resize with aligned corners, the reference's choice everywhere in this network.
_resize = functools.partial(resize, align_corners=True)


class ChangeGuideModule(nn.Module):
    """Position self-attention guided by a change prior.

    Queries and keys (``channels // 8`` wide) and values (``channels`` wide) are 1x1 convs of
    the input, each multiplied by ``1 + sigmoid(prior)``; the unscaled dot-product attention
    over all positions is added to the input through a gain initialised to zero.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.query = nn.Conv2d(channels, channels // QUERY_RATIO, kernel_size=1)
        self.key = nn.Conv2d(channels, channels // QUERY_RATIO, kernel_size=1)
        self.value = nn.Conv2d(channels, channels, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        gate = 1 + torch.sigmoid(_resize(prior, x.shape[-2:]))

        def tokens(conv: nn.Conv2d) -> torch.Tensor:
            """``[B, 1, h*w, C]``: one attention head (the 4-D layout ONNX export supports)."""
            return (conv(x) * gate).flatten(2).transpose(1, 2).unsqueeze(1)

        attended = F.scaled_dot_product_attention(
            tokens(self.query), tokens(self.key), tokens(self.value), scale=1.0
        )
        return self.gamma * attended.squeeze(1).transpose(1, 2).reshape_as(x) + x


@register_model(
    "cgnet",
    info=ModelInfo(
        "CNN",
        "VGG-16",
        38.989,
        415.882,
        pretrained="timm vgg16_bn.tv_in1k (ImageNet)",
        distill_target="the 1-channel change logit at full resolution",
    ),
)
class CGNet(ChangeModel):
    """CGNet with a one-channel change logit at full input resolution (BCE).

    A shared VGG-16-BN encodes both dates; their features are fused per stride, a change prior
    is predicted from the deepest level, and prior-guided self-attention refines the decoder on
    its way up to stride 2 (see the module doc). The student distils what :meth:`forward`
    returns: the final change logit, resized to the input (Open-CD's decode head, index -1).
    Input height and width must be multiples of 16. The change prior is part of the inference
    network (it guides the attention); with ``aux_heads=True`` :meth:`forward_with_aux` also
    returns it, resized to the input, for its own BCE term as in the reference. The attention
    uses ``scaled_dot_product_attention`` with scale 1 (the reference's plain softmax of dot
    products), so that PyTorch can pick a fused kernel rather than store the (h*w)^2 matrix,
    16384^2 per image at stride 4 of a 512 input.

    The reference also builds three 3x3 conv-BN-ReLU blocks it never uses (``up_layer4``,
    ``up_layer3``, ``up_layer2``, 5.311 M); Table II counts them, so they are kept in
    :attr:`unused`, frozen since they never receive gradients.

    Args:
        aux_heads: also return the change prior from :meth:`forward_with_aux`.
    """

    feature_module = "head"
    out_channels = 1

    def __init__(self, aux_heads: bool = False) -> None:
        super().__init__()
        self.aux_heads = aux_heads
        self.encoder = vgg16_features(batch_norm=True)[:ENCODER_LAYERS]
        self.reduce = nn.ModuleList(ConvNormAct(2 * w, w, 3) for w in FUSED_WIDTHS)
        deepest = FUSED_WIDTHS[-1]
        self.prior_head = nn.Sequential(
            ConvNormAct(deepest, HEAD_WIDTH, 3), nn.Conv2d(HEAD_WIDTH, 1, 3, padding=1)
        )
        # Decoder steps from stride 16 up to stride 2: guide, upsample, fuse with the skip.
        widths = [deepest, *FUSED_WIDTHS[-2::-1]]
        self.guides = nn.ModuleList(ChangeGuideModule(w) for w in widths[:-1])
        self.decoder = nn.ModuleList(
            ConvNormAct(w + skip, skip, 3) for w, skip in itertools.pairwise(widths)
        )
        self.head = nn.Sequential(
            ConvNormAct(FUSED_WIDTHS[0], HEAD_WIDTH, 3), nn.Conv2d(HEAD_WIDTH, 1, kernel_size=1)
        )
        self.unused = nn.ModuleDict(
            {
                "up_layer4": ConvNormAct(512, 512, 3),
                "up_layer3": ConvNormAct(512, 512, 3),
                "up_layer2": ConvNormAct(256, 256, 3),
            }
        )
        self.unused.requires_grad_(False)

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features at the tap layers, shallowest first."""
        return tapped_features(self.encoder, x, ENCODER_TAPS)

    def _logits(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Change logit and change prior, both at stride 2."""
        # The dates go through the encoder separately: its BN statistics are per date.
        fused = [
            reduce(torch.cat((f2, f1), dim=1))
            for reduce, f1, f2 in zip(self.reduce, self._encode(x1), self._encode(x2), strict=True)
        ]
        prior = self.prior_head(_resize(fused[-1], fused[0].shape[-2:]))
        x = fused[-1]
        for guide, decode, skip in zip(self.guides, self.decoder, fused[-2::-1], strict=True):
            x = decode(torch.cat((_resize(guide(x, prior), skip.shape[-2:]), skip), dim=1))
        return self.head(x), prior

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        logits, _ = self._logits(x1, x2)
        return _resize(logits, x1.shape[-2:])

    def forward_with_aux(
        self, x1: torch.Tensor, x2: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Full-resolution change logit plus, with ``aux_heads``, the change prior."""
        logits, prior = self._logits(x1, x2)
        size = x1.shape[-2:]
        return _resize(logits, size), [_resize(prior, size)] if self.aux_heads else []
