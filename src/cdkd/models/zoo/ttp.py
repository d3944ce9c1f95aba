"""TTP, Time Travelling Pixels (Chen et al., 2024): SAM's ViT-L encoder adapted to change detection.

Both dates go through SAM's image encoder (timm ``samvit_large_patch16`` built at 512 px: 24
blocks, window 14, global attention at blocks 5/11/17/23, neck down to 256 channels at 1/16) as
one batch. Every windowed block ends with a time-travelling activation gate that lets each
date's tokens look at the other date's, and every block's ``attn.qkv`` carries a rank-16 LoRA
adapter. The two 256-channel maps are concatenated, a SimpleFPN turns them into five levels
(1/4 to 1/64, 256 channels each) and a SegFormer-style MLP head classifies (unchanged, changed)
on a fixed 128x128 grid.

The size matches the JL1-CD paper's Table II: 353.261 M (printed 361.472 with the paper's x1.024
unit slip): SAM 305.100 M, gates 42.025 M, LoRA 1.573 M, SimpleFPN 3.905 M, head 0.659 M.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn

from cdkd.models.base import ChangeModel
from cdkd.models.layers import ConvNormAct, concat_resized
from cdkd.models.registry import ModelInfo, register_model

#: LayerNorm epsilon of the SAM blocks (SAM's and Open-CD's; timm's SAM builds 1e-5).
SAM_LN_EPS = 1e-6
#: LayerNorm epsilon of the SimpleFPN (mmpretrain's LN2d built through mmcv).
FPN_LN_EPS = 1e-5
#: Levels the SimpleFPN builds from the encoder map (strides 4, 8, 16, 32 of the image), the
#: levels it outputs (one more, stride 64) and their width; the head's width.
FPN_LEVELS = 4
FPN_OUTS = 5
FPN_CHANNELS = 256
HEAD_CHANNELS = 256


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update: ``W x + b + s * B A drop(x)``.

    ``A`` starts Kaiming-uniform and ``B`` at zero, so the wrapped layer initially computes
    exactly what the original did; ``s = alpha / rank`` (peft's LoRA conventions). The
    original layer's bias stays trainable (peft's ``bias='lora_only'``).
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.base = base
        self.lora_a = nn.Linear(base.in_features, rank, bias=False)
        self.lora_b = nn.Linear(rank, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_a.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_b.weight)
        self.dropout = nn.Dropout(dropout)
        self.scaling = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.lora_b(self.lora_a(self.dropout(x))) * self.scaling


class TimeGate(nn.Module):
    """Time-travelling activation gate between the two halves (dates) of a token batch.

    With ``a = sigmoid(w . [x0, x1])`` per token, the first date is updated by
    ``x0 += ffn(x1 * a)`` and then the second by ``x1 += ffn(x0 * a)`` from the updated
    ``x0``; ``ffn`` (C -> C, GELU, C -> C) is shared by both updates. The reference's 1x1
    convolutions are written as linear layers over the channels-last tokens (the same maps);
    ``w`` starts at ``1 / (2C)``, i.e. the mean over both dates' channels.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.down_channel = nn.Linear(2 * dim, 1, bias=False)
        nn.init.constant_(self.down_channel.weight, 1.0 / (2 * dim))
        self.soft_ffn = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0, x1 = x.chunk(2)
        gate = torch.sigmoid(self.down_channel(torch.cat([x0, x1], dim=-1)))
        x0 = x0 + self.soft_ffn(x1 * gate)
        x1 = x1 + self.soft_ffn(x0 * gate)
        return torch.cat([x0, x1])


class GatedBlock(nn.Module):
    """A SAM encoder block followed, in windowed blocks, by a :class:`TimeGate`."""

    def __init__(self, block: nn.Module, gate: TimeGate | None) -> None:
        super().__init__()
        self.block = block
        self.gate = gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(x)
        return x if self.gate is None else self.gate(x)


class SimpleFPN(nn.Module):
    """ViTDet's simple feature pyramid from one stride-16 map, with LayerNorm2d and no ReLU.

    Deconvolutions give strides 4 and 8, the map itself is stride 16 and a 2x2 max-pool
    stride 32; each level gets a 1x1 lateral and a 3x3 output conv (no bias, LN2d), and
    ``num_outs - 4`` extra levels are strided 1x1 max-pools of the last one.
    """

    def __init__(self, in_channels: int, out_channels: int, num_outs: int) -> None:
        super().__init__()
        half, quarter = in_channels // 2, in_channels // 4
        norm = functools.partial(LayerNorm2d, eps=FPN_LN_EPS)
        self.up4 = nn.Sequential(
            nn.ConvTranspose2d(in_channels, half, kernel_size=2, stride=2),
            norm(half),
            nn.GELU(),
            nn.ConvTranspose2d(half, quarter, kernel_size=2, stride=2),
        )
        self.up2 = nn.ConvTranspose2d(in_channels, half, kernel_size=2, stride=2)
        self.down2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.lateral = nn.ModuleList(
            ConvNormAct(c, out_channels, 1, norm=norm, act=None)
            for c in (quarter, half, in_channels, in_channels)
        )
        self.output = nn.ModuleList(
            ConvNormAct(out_channels, out_channels, 3, norm=norm, act=None)
            for _ in range(FPN_LEVELS)
        )
        self.extra = num_outs - FPN_LEVELS

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        levels = [self.up4(x), self.up2(x), x, self.down2(x)]
        outs = [
            out(lateral(level))
            for lateral, out, level in zip(self.lateral, self.output, levels, strict=True)
        ]
        for _ in range(self.extra):
            outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return outs


class MLPSegHead(nn.Module):
    """SegFormer head on a fixed grid: per-level 1x1 embedding, resize, concat, fuse, classify."""

    def __init__(
        self, in_channels: int, num_inputs: int, channels: int, num_classes: int, out_size: int
    ) -> None:
        super().__init__()
        self.levels = nn.ModuleList(ConvNormAct(in_channels, channels) for _ in range(num_inputs))
        self.fuse = ConvNormAct(channels * num_inputs, channels)
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)
        self.out_size = out_size

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        x = concat_resized(self.levels, levels, (self.out_size, self.out_size))
        return self.classifier(self.fuse(x))


def fit_positions(
    state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Resize SAM's position tables in ``state`` to the shapes of ``target``.

    The absolute embedding ``[1, H, W, C]`` is resized bicubically, the relative tables
    ``[2S - 1, head_dim]`` linearly, as the reference does when it builds SAM at 512 px from
    the 1024-px weights. Other tensors pass unchanged.
    """
    fitted = {}
    for key, value in state.items():
        shape = target[key].shape if key in target else value.shape
        if value.shape != shape and key == "pos_embed":
            value = F.interpolate(
                value.permute(0, 3, 1, 2), size=tuple(shape[1:3]), mode="bicubic"
            ).permute(0, 2, 3, 1)
        elif value.shape != shape and key.endswith(("rel_pos_h", "rel_pos_w")):
            value = F.interpolate(value.T[None], size=shape[0], mode="linear")[0].T
        fitted[key] = value.contiguous()
    return fitted


@register_model(
    "ttp_sam_l",
    info=ModelInfo(
        "Foundation model",
        "SAM",
        353.261,
        908.0,
        pretrained="timm samvit_large_patch16.sa1b (frozen, LoRA)",
        distill_target="the head's 2-channel logits on the fixed 128x128 grid",
        test_overrides={
            "img_size": 64,
            "out_size": 16,
            "encoder_overrides": {
                "depth": 4,
                "embed_dim": 64,
                "num_heads": 2,
                "global_attn_indexes": (1, 3),
                "neck_chans": 32,
            },
        },
    ),
)
class TimeTravellingPixels(ChangeModel):
    """TTP with LoRA-tuned SAM, time-travelling gates, SimpleFPN and a 2-channel head.

    Distillation target: the head's logits on its fixed ``out_size`` grid (128x128, 1/4 of a
    512 px input), what ``forward`` returns.

    Frozen (``requires_grad=False``, still counted in the size): every SAM weight except the
    LoRA matrices and the qkv biases, and the time-travelling gates, which stay at their
    initialisation: the reference wraps the encoder with peft, which freezes the gates too
    because they live inside the encoder and are not listed in ``modules_to_save``.
    ``train_gates=True`` lets them learn (the variant the TTP paper describes). The SAM neck
    (pretrained) stays frozen as in the reference unless ``train_neck``. Trainable
    parameters: 6.210 M by default, 48.235 M with ``train_gates=True``.

    Deviations: LoRA is the project's own :class:`LoRALinear` (peft's initialisation and
    scaling, no peft dependency), and the gates' 1x1 convolutions are linear layers over
    channels-last tokens (the same maps and parameter counts, with ``[out, in]`` weights).

    Args:
        encoder: timm architecture of the SAM encoder.
        img_size: side the encoder is built for (position tables sized for it).
        lora_rank, lora_alpha, lora_dropout: LoRA settings of every block's ``attn.qkv``.
        train_gates: let the time-travelling gates learn (default: frozen, see above).
        train_neck: let SAM's neck (1x1 and 3x3 convs with LayerNorm2d) learn.
        out_size: side of the head's fixed output grid.
        encoder_overrides: extra timm constructor arguments of the encoder (e.g. a smaller
            network for quick tests).
        grad_checkpointing: recompute the encoder blocks in the backward pass (timm's
            activation checkpointing) instead of storing their activations.
    """

    feature_module = "head.classifier"
    out_channels = 2

    def __init__(
        self,
        encoder: str = "samvit_large_patch16",
        img_size: int = 512,
        lora_rank: int = 16,
        lora_alpha: float = 32.0,
        lora_dropout: float = 0.01,
        train_gates: bool = False,
        train_neck: bool = False,
        out_size: int = 128,
        encoder_overrides: Mapping[str, Any] | None = None,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = timm.create_model(
            encoder,
            img_size=img_size,
            num_classes=0,
            norm_layer=functools.partial(nn.LayerNorm, eps=SAM_LN_EPS),
            **(encoder_overrides or {}),
        )
        self.encoder.requires_grad_(False)
        self.encoder.neck.requires_grad_(train_neck)
        dim = self.encoder.embed_dim
        gated = []
        for block in self.encoder.blocks:
            block.attn.qkv = LoRALinear(block.attn.qkv, lora_rank, lora_alpha, lora_dropout)
            block.attn.qkv.base.bias.requires_grad_(True)
            gate = TimeGate(dim).requires_grad_(train_gates) if block.window_size > 0 else None
            gated.append(GatedBlock(block, gate))
        self.encoder.blocks = nn.Sequential(*gated)
        self.encoder.set_grad_checkpointing(grad_checkpointing)

        # Both dates' neck outputs side by side (Open-CD's concat fusion neck).
        neck_channels = self.encoder.num_features
        self.fpn = SimpleFPN(2 * neck_channels, FPN_CHANNELS, FPN_OUTS)
        self.head = MLPSegHead(FPN_CHANNELS, FPN_OUTS, HEAD_CHANNELS, self.out_channels, out_size)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        features = self.encoder.forward_features(torch.cat([x1, x2]))
        return self.head(self.fpn(torch.cat(features.chunk(2), dim=1)))
