"""BIT, the bitemporal image transformer (Chen et al., 2021), as built by Open-CD.

A shared ResNetV1c-18 cut after its third stage, whose last stage keeps stride 1 (no dilation),
gives 256 channels at 1/8 resolution per date. The head, shared between the dates, upsamples
them x2, reduces them to 32 channels (3x3 conv with bias, ReLU) and summarises each image in 4
semantic tokens: a 1x1 conv with ReLU gives 4 attention maps, softmax-normalised over the pixels,
that pool the features. The 8 tokens of the pair, plus a learned positional embedding, go
through one pre-norm transformer encoder layer; then 8 pre-norm decoder layers let each date's
pixels attend to that date's own 4 tokens. The head ends with ``|f1 - f2|``, bilinear x4
upsampling to the input resolution, channel dropout 0.1 and a 1x1 conv to 2 logits (CE).

Attention in every layer has 8 heads over a 64-wide bias-free projection of the 32-channel
tokens, scaled by ``32 ** -0.5`` (the token width, not the head width), followed by a linear
map back to 32; the feed-forward part is 32 -> 64 -> 32 with ReLU. The JL1-CD configuration has
no dropout inside the transformer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cdkd.models.backbones import resnet_v1c
from cdkd.models.base import ChangeModel
from cdkd.models.layers import ConvNormAct, classifier, fan_out_init, init_classifier
from cdkd.models.registry import ModelInfo, register_model

#: ResNet-18 stage whose output feeds the head, and its width.
LAST_STAGE = 3
BACKBONE_CHANNELS = 256
#: Width of the pixel features and tokens, and of the attention/feed-forward inner layers.
TOKEN_CHANNELS = 32
INNER_CHANNELS = 64
NUM_HEADS = 8
TOKENS_PER_IMAGE = 4
ENCODER_DEPTH = 1
DECODER_DEPTH = 8
#: Upsampling before the head's conv and after the difference (1/8 -> 1/4 -> 1/1).
PRE_UPSAMPLE = 2
POST_UPSAMPLE = 4


class Attention(nn.Module):
    """Multi-head attention of ``x`` over ``ref`` with BIT's projections and scale."""

    def __init__(self, channels: int, inner_channels: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = channels**-0.5
        self.to_q = nn.Linear(channels, inner_channels, bias=False)
        self.to_k = nn.Linear(channels, inner_channels, bias=False)
        self.to_v = nn.Linear(channels, inner_channels, bias=False)
        self.proj = nn.Linear(inner_channels, channels)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, N, inner]`` -> ``[B, heads, N, inner / heads]``."""
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        q, k, v = (
            self._heads(self.to_q(x)),
            self._heads(self.to_k(ref)),
            self._heads(self.to_v(ref)),
        )
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.proj(out.transpose(1, 2).flatten(2))


class TransformerLayer(nn.Module):
    """Pre-norm attention and feed-forward residual layer.

    Without ``cross`` the tokens attend to themselves (the encoder); with it, queries attend to
    a separately normalised reference sequence (the decoder: pixels attending to tokens).
    """

    def __init__(self, channels: int, inner_channels: int, num_heads: int, cross: bool) -> None:
        super().__init__()
        self.norm_query = nn.LayerNorm(channels)
        self.norm_ref = nn.LayerNorm(channels) if cross else None
        self.attn = Attention(channels, inner_channels, num_heads)
        self.norm_ffn = nn.LayerNorm(channels)
        self.ffn = nn.Sequential(
            nn.Linear(channels, inner_channels),
            nn.ReLU(inplace=True),
            nn.Linear(inner_channels, channels),
        )

    def forward(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        query = self.norm_query(x)
        keys = query if self.norm_ref is None else self.norm_ref(ref)
        x = x + self.attn(query, keys)
        return x + self.ffn(self.norm_ffn(x))


@register_model(
    "bit_r18",
    info=ModelInfo(
        "Transformer",
        "ResNet-18",
        2.990,
        34.996,
        pretrained="timm resnet18d (ImageNet, first three stages), loaded into ResNetV1c-18",
        distill_target="the 2-channel logits at full resolution",
    ),
)
class BIT(ChangeModel):
    """BIT with a ResNet-18 (three stages, output stride 8) and 2-channel logits at full size.

    ``forward`` returns the classifier's ``[B, 2, H, W]`` logits, which the student distils.
    Input height and width must be multiples of 8. Follows Open-CD's ``BITHead``, which differs
    from the authors' BIT_CD (torchvision 7x7 stem and dilated third stage there, no ReLU after
    the tokenizer conv, a two-conv classifier).
    """

    feature_module = "classifier"
    out_channels = 2

    def __init__(self) -> None:
        super().__init__()
        self.backbone = resnet_v1c(18, out_indices=(LAST_STAGE,))
        # Open-CD configures the third stage with stride 1 and no dilation (output stride 8).
        first_block = self.backbone[f"layer{LAST_STAGE}"][0]
        first_block.conv1.stride = (1, 1)
        first_block.downsample[0].stride = (1, 1)

        # Biased conv-ReLU units with mmcv's ConvModule init (Kaiming fan-out, zero bias).
        self.reduce = fan_out_init(
            ConvNormAct(BACKBONE_CHANNELS, TOKEN_CHANNELS, 3, bias=True, norm=None), zero_bias=True
        )
        self.token_attention = fan_out_init(
            ConvNormAct(TOKEN_CHANNELS, TOKENS_PER_IMAGE, 1, bias=True, norm=None), zero_bias=True
        )
        self.pos_embedding = nn.Parameter(torch.randn(1, 2 * TOKENS_PER_IMAGE, TOKEN_CHANNELS))
        self.encoder = nn.ModuleList(
            TransformerLayer(TOKEN_CHANNELS, INNER_CHANNELS, NUM_HEADS, cross=False)
            for _ in range(ENCODER_DEPTH)
        )
        self.decoder = nn.ModuleList(
            TransformerLayer(TOKEN_CHANNELS, INNER_CHANNELS, NUM_HEADS, cross=True)
            for _ in range(DECODER_DEPTH)
        )
        self.classifier = classifier(TOKEN_CHANNELS, self.out_channels)
        init_classifier(self.classifier[1])

    def tokens(self, features: torch.Tensor) -> torch.Tensor:
        """Semantic tokens ``[B, 4, 32]``: features pooled by spatially softmaxed attention."""
        attention = self.token_attention(features).flatten(2).softmax(dim=-1)
        return torch.einsum("bnl,bcl->bnc", attention, features.flatten(2))

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        # The backbone sees each date alone (per-date BN statistics in training, as upstream);
        # the head has no batch statistics, so both dates go through it as one batch.
        features = torch.cat([self.backbone(x)[0] for x in (x1, x2)])
        features = F.interpolate(
            features, scale_factor=PRE_UPSAMPLE, mode="bilinear", align_corners=False
        )
        features = self.reduce(features)

        tokens = torch.cat(self.tokens(features).chunk(2), dim=1) + self.pos_embedding
        for layer in self.encoder:
            tokens = layer(tokens)
        tokens = torch.cat(tokens.chunk(2, dim=1))

        height, width = features.shape[-2:]
        pixels = features.flatten(2).transpose(1, 2)
        for layer in self.decoder:
            pixels = layer(pixels, tokens)
        features = pixels.transpose(1, 2).unflatten(2, (height, width))

        f1, f2 = features.chunk(2)
        diff = F.interpolate(
            (f1 - f2).abs(), scale_factor=POST_UPSAMPLE, mode="bilinear", align_corners=False
        )
        return self.classifier(diff)
