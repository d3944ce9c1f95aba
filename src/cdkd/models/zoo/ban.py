"""BAN, the Bi-Temporal Adapter Network (Li et al., 2024), as trained for the JL1-CD benchmark.

A frozen foundation ViT (CLIP ViT-B/16, ImageNet-21k ViT-B/16 or CLIP ViT-L/14-336) sees each
date resized to its own resolution; three of its blocks are tapped. A trainable side branch, the
Bi-TAB (a MiT-b2 SegFormer encoder on the full-resolution image), takes those maps in through a
bridging module after its stages 2, 3 and 4 (layer-norm and 1x1 projection of the ViT map,
cross-attention from the side features to it, a MixFFN with a 4-channel hidden layer, and the
resized projected map added on top). An MLP decoder embeds both dates' four levels at 1/4
resolution, concatenates the dates and classifies (unchanged, changed) after a MixFFN.

The sizes match the JL1-CD paper's Table II: 91.346 M (ViT-B), 112.611 M (ViT-B IN21K with
Open-CD's pre-norm, printed 115.712 = 0.113 G x 1024) and 254.987 M (ViT-L, printed 261.120).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import timm
import torch
from timm.layers import LayerNorm2d
from torch import nn
from torch.utils.checkpoint import checkpoint

from cdkd.errors import ConfigError
from cdkd.models.backbones import mix_transformer
from cdkd.models.base import ChangeModel
from cdkd.models.layers import ConvNormAct, concat_resized, resize
from cdkd.models.registry import ModelInfo, register_model

#: Side-branch stages (0-based) after which a foundation-model map is fused in, one per tap.
FUSED_STAGES = (1, 2, 3)
#: Hidden width of the bridges' MixFFN (BridgeLayer's default ``feedforward_channels``).
BRIDGE_FFN_HIDDEN = 4
#: LayerNorm epsilons: the ViT-map projection uses mmseg's LayerNorm2d, the bridge layers
#: mmpretrain's LN2d built through mmcv.
PROJECTION_LN_EPS = 1e-6
BRIDGE_LN_EPS = 1e-5
DECODER_DROPOUT = 0.1


class MixFFN(nn.Module):
    """SegFormer's MixFFN as a residual unit: 1x1, depthwise 3x3, GELU, 1x1 back."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1)
        self.pos = nn.Conv2d(hidden, hidden, kernel_size=3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1)

    def forward(self, x: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        return identity + self.fc2(self.act(self.pos(self.fc1(x))))


class Bridge(nn.Module):
    """Fuses a foundation-model map into a side-branch stage output (BAN's bridging module).

    The ViT map is layer-normed and projected to the stage width; the side features attend
    to it (pre-norm cross-attention), pass a narrow MixFFN, and get the projected map
    (bilinearly resized) added.
    """

    def __init__(self, fm_channels: int, channels: int, num_heads: int) -> None:
        super().__init__()
        self.project = nn.Sequential(
            LayerNorm2d(fm_channels, eps=PROJECTION_LN_EPS),
            nn.Conv2d(fm_channels, channels, kernel_size=1),
        )
        # Caffe2 Xavier initialisation of the projection, as the reference's init_weights.
        nn.init.kaiming_uniform_(self.project[1].weight, a=1)
        nn.init.zeros_(self.project[1].bias)
        self.norm1 = LayerNorm2d(channels, eps=BRIDGE_LN_EPS)
        self.attn = nn.MultiheadAttention(channels, num_heads, batch_first=True)
        self.norm2 = LayerNorm2d(channels, eps=BRIDGE_LN_EPS)
        self.ffn = MixFFN(channels, BRIDGE_FFN_HIDDEN)

    def forward(self, x: torch.Tensor, fm: torch.Tensor) -> torch.Tensor:
        fm = self.project(fm)
        query = self.norm1(x).flatten(2).transpose(1, 2)
        memory = fm.flatten(2).transpose(1, 2)
        attended = self.attn(query, memory, memory, need_weights=False)[0]
        x = x + attended.transpose(1, 2).reshape(x.shape)
        x = self.ffn(self.norm2(x), identity=x)
        return x + resize(fm, x.shape[-2:])


class AdapterBranch(nn.Module):
    """The Bi-TAB: a MiT encoder whose stages 2-4 take in the foundation-model maps."""

    def __init__(self, variant: str, fm_channels: int, grad_checkpointing: bool) -> None:
        super().__init__()
        self.mit = mix_transformer(variant)
        self.widths = [getattr(self.mit, f"patch_embed{i}").proj.out_channels for i in range(1, 5)]
        heads = [getattr(self.mit, f"block{i}")[0].attn.num_heads for i in range(1, 5)]
        self.bridges = nn.ModuleList(
            Bridge(fm_channels, self.widths[i], heads[i]) for i in FUSED_STAGES
        )
        self.grad_checkpointing = grad_checkpointing

    def _run(self, module: nn.Module, *args: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(module, *args, use_reentrant=False)
        return module(*args)

    def forward(self, image: torch.Tensor, fm_maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The four stage outputs (strides 4-32), fused with ``fm_maps`` at stages 2-4."""
        fm_of_stage = dict(zip(FUSED_STAGES, fm_maps, strict=True))
        x, levels = image, []
        for stage in range(4):
            x = getattr(self.mit, f"patch_embed{stage + 1}")(x)
            for block in getattr(self.mit, f"block{stage + 1}"):
                x = self._run(block, x)
            x = getattr(self.mit, f"norm{stage + 1}")(x)
            if stage in fm_of_stage:
                bridge = self.bridges[FUSED_STAGES.index(stage)]
                x = self._run(bridge, x, fm_of_stage[stage])
            levels.append(x)
        return levels


class BanDecoder(nn.Module):
    """BAN's MLP decoder: per-date level embedding at 1/4, date concat, MixFFN, classifier."""

    def __init__(self, in_channels: Sequence[int], channels: int, num_classes: int) -> None:
        super().__init__()
        self.levels = nn.ModuleList(ConvNormAct(c, channels) for c in in_channels)
        self.fuse = ConvNormAct(channels * len(in_channels), channels)
        self.discriminator = MixFFN(2 * channels, 2 * channels)
        self.dropout = nn.Dropout2d(DECODER_DROPOUT)
        self.classifier = nn.Conv2d(2 * channels, num_classes, kernel_size=1)

    def _embed(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.fuse(concat_resized(self.levels, levels, levels[0].shape[-2:]))

    def forward(
        self, levels1: Sequence[torch.Tensor], levels2: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        # Each date is embedded on its own: its BatchNorm statistics are per date, as upstream.
        x = torch.cat([self._embed(levels1), self._embed(levels2)], dim=1)
        x = self.discriminator(x, identity=x)
        return self.classifier(self.dropout(x))


_TEST_OVERRIDES: dict[str, Any] = {
    "encoder_resolution": 32,
    "encoder_taps": (0, 1, 2),
    "encoder_overrides": {"embed_dim": 64, "num_heads": 2},
    "side_encoder": "mit_b0",
}
_DISTILL_TARGET = "the decoder's 2-channel logits at 1/4 resolution"


@register_model(
    "ban_vit_b",
    info=ModelInfo(
        "Foundation model",
        "ViT-B",
        91.346,
        74.409,
        pretrained="timm vit_base_patch16_clip_quickgelu_224.openai (frozen) + smp mit_b2",
        distill_target=_DISTILL_TARGET,
        test_overrides=_TEST_OVERRIDES,
    ),
    encoder="vit_base_patch16_clip_quickgelu_224",
    encoder_resolution=224,
    encoder_taps=(2, 5, 8),
)
@register_model(
    "ban_vit_b_in21k",
    info=ModelInfo(
        "Foundation model",
        "ViT-B (IN21K)",
        112.611,
        83.142,
        pretrained="timm vit_base_patch16_224.augreg_in21k (frozen) + smp mit_b2",
        distill_target=_DISTILL_TARGET,
        test_overrides=_TEST_OVERRIDES,
    ),
    encoder="vit_base_patch16_224",
    encoder_resolution=224,
    encoder_taps=(5, 8, 11),
    encoder_pre_norm=True,
)
@register_model(
    "ban_vit_l",
    info=ModelInfo(
        "Foundation model",
        "ViT-L",
        254.987,
        338.0,
        pretrained="timm vit_large_patch14_clip_quickgelu_336.openai (frozen) + smp mit_b2",
        distill_target=_DISTILL_TARGET,
        test_overrides=_TEST_OVERRIDES,
    ),
    encoder="vit_large_patch14_clip_quickgelu_336",
    encoder_resolution=336,
    encoder_taps=(5, 11, 17),
)
class BAN(ChangeModel):
    """BAN with a frozen timm ViT, a MiT Bi-TAB and a 2-channel (unchanged, changed) output.

    Distillation target: the decoder's logits at 1/4 of the input resolution (what
    ``forward`` returns); its feature map is the decoder's MixFFN output, before the
    classifier's dropout. The ViT is frozen (``requires_grad=False``, position embedding
    included, as the JL1-CD configs' ``frozen_exclude=[]``) and keeps only the blocks up to its
    last tap, without final norm; the side branch, bridges and decoder train.

    Deliberate deviations from Open-CD's build: both dates go through the ViT and the side
    branch as one batch (neither has batch statistics, so the result is the same), while the
    decoder embeds each date on its own as upstream (its BatchNorms see one date at a time).
    The IN21K variant keeps the LayerNorm before the first block that Open-CD's config
    inherits from the CLIP base config (``pre_norm=True``, 1,536 parameters): the augreg
    release has no such layer, so it stays at LayerNorm's initialisation (unit scale, zero
    shift) and still normalises every token before the first block.

    Args:
        encoder: timm architecture of the frozen ViT.
        encoder_resolution: side the images are resized to for the ViT (bilinear).
        encoder_taps: 0-based ViT blocks whose outputs feed the bridges after side-branch
            stages 2, 3 and 4; blocks after the last tap are not built.
        side_encoder: smp MiT variant of the Bi-TAB (``mit_b2`` in the JL1-CD runs).
        decoder_channels: width of the decoder's level embeddings.
        encoder_pre_norm: add a LayerNorm (the blocks' epsilon) before the ViT's first block,
            for encoders whose architecture has none (CLIP encoders have their own).
        encoder_overrides: extra timm constructor arguments of the ViT (e.g. a narrower
            network for quick tests).
        grad_checkpointing: recompute the side branch's blocks and bridges in the backward
            pass instead of storing their activations (the frozen ViT stores none).
    """

    feature_module = "decoder.dropout"
    out_channels = 2

    def __init__(
        self,
        encoder: str,
        encoder_resolution: int,
        encoder_taps: Sequence[int],
        side_encoder: str = "mit_b2",
        decoder_channels: int = 128,
        encoder_pre_norm: bool = False,
        encoder_overrides: Mapping[str, Any] | None = None,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        taps = [int(t) for t in encoder_taps]
        if len(taps) != len(FUSED_STAGES) or taps != sorted(set(taps)) or taps[0] < 0:
            raise ConfigError(
                f"encoder_taps must be {len(FUSED_STAGES)} increasing block indices, "
                f"got {list(encoder_taps)}"
            )
        self.encoder_resolution = int(encoder_resolution)
        self.encoder_taps = taps
        kwargs = {"num_classes": 0, "img_size": self.encoder_resolution}
        kwargs.update(encoder_overrides or {})
        self.encoder = timm.create_model(encoder, depth=taps[-1] + 1, **kwargs)
        if encoder_pre_norm:
            # timm's own ``pre_norm`` would also drop the patch embedding's bias (CLIP style).
            norm = self.encoder.blocks[0].norm1
            self.encoder.norm_pre = nn.LayerNorm(self.encoder.embed_dim, eps=norm.eps)
        self.encoder.prune_intermediate_layers(taps, prune_norm=True, prune_head=True)
        self.encoder.requires_grad_(False)

        self.branch = AdapterBranch(side_encoder, self.encoder.embed_dim, grad_checkpointing)
        self.decoder = BanDecoder(self.branch.widths, decoder_channels, self.out_channels)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        images = torch.cat([x1, x2])
        side = self.encoder_resolution
        resized = resize(images, (side, side))
        fm_maps = self.encoder.forward_intermediates(
            resized, indices=self.encoder_taps, output_fmt="NCHW", intermediates_only=True
        )
        levels = self.branch(images, fm_maps)
        levels1, levels2 = zip(*(level.chunk(2) for level in levels), strict=True)
        return self.decoder(levels1, levels2)

    @property
    def feature_channels(self) -> int:
        """Width of the MixFFN output the classifier reads (its dropout has no weights)."""
        return int(self.decoder.classifier.in_channels)
