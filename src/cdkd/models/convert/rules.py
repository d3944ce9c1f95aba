"""Building blocks of the checkpoint key mappings: rules, their application, shared tables.

A rule is a regular expression that must match a whole source key and the cdkd key it becomes
(``re`` replacement syntax), or ``None`` for a tensor cdkd does not have. The first matching
rule wins; a key no rule matches is kept as it is, so a strict load names it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

Rule = tuple[str, str | None]
Reshape = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


#: mmseg ResNetV1c (``backbone.stem`` of three conv-BN pairs, ``layerN``) -> timm deep-stem
#: ResNet (``conv1.0/1/3/4/6``, ``bn1``); the residual stages share their names.
RESNET_V1C: list[Rule] = [
    (r"stem\.([0134])\.(.*)", r"conv1.\1.\2"),
    (r"stem\.6\.(.*)", r"conv1.6.\1"),
    (r"stem\.7\.(.*)", r"bn1.\1"),
    (r"(layer\d\..*)", r"\1"),
]


@dataclass(frozen=True)
class NetworkMap:
    """How one network's Open-CD keys become cdkd's: renames, then an optional reshape."""

    rules: Sequence[Rule]
    reshape: Reshape | None = None


def prefixed(prefix: str, target: str, rules: Sequence[Rule]) -> list[Rule]:
    """``rules`` applied below ``prefix`` (an Open-CD module path) and ``target`` (cdkd's)."""
    out: list[Rule] = []
    for pattern, repl in rules:
        out.append((re.escape(prefix) + pattern, None if repl is None else target + repl))
    return out


def rename(state: Mapping[str, torch.Tensor], rules: Sequence[Rule]) -> dict[str, torch.Tensor]:
    """Apply ``rules`` to every key of ``state`` (see the module docstring)."""
    compiled = [(re.compile(pattern), repl) for pattern, repl in rules]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for pattern, repl in compiled:
            match = pattern.fullmatch(key)
            if match:
                if repl is not None:
                    out[count_from_one(match.expand(repl))] = value
                break
        else:
            out[key] = value
    return out


def mit_rules(src: str, dst: str) -> list[Rule]:
    """mmseg's MixVisionTransformer below ``src`` -> smp's MiT below ``dst``.

    mmseg keeps attention as ``nn.MultiheadAttention`` (one ``in_proj`` for q, k, v) and the
    MixFFN as 1x1 convolutions; smp has ``q`` and ``kv`` linears and linear ``fc1``/``fc2``:
    the renamed ``in_proj`` and the FFN kernels are split and flattened by :func:`mit_reshape`.
    """
    rules: list[tuple[str, str]] = [
        (r"layers\.(\d)\.0\.projection\.(.*)", "patch_embed<\\1>.proj.\\2"),
        (r"layers\.(\d)\.0\.norm\.(.*)", "patch_embed<\\1>.norm.\\2"),
        (
            r"layers\.(\d)\.1\.(\d+)\.attn\.attn\.in_proj_(weight|bias)",
            "block<\\1>.\\2.attn.in_proj_\\3",
        ),
        (r"layers\.(\d)\.1\.(\d+)\.attn\.attn\.out_proj\.(.*)", "block<\\1>.\\2.attn.proj.\\3"),
        (r"layers\.(\d)\.1\.(\d+)\.attn\.(sr|norm)\.(.*)", "block<\\1>.\\2.attn.\\3.\\4"),
        (r"layers\.(\d)\.1\.(\d+)\.(norm[12])\.(.*)", "block<\\1>.\\2.\\3.\\4"),
        (r"layers\.(\d)\.1\.(\d+)\.ffn\.layers\.0\.(.*)", "block<\\1>.\\2.mlp.fc1.\\3"),
        (r"layers\.(\d)\.1\.(\d+)\.ffn\.layers\.1\.(.*)", "block<\\1>.\\2.mlp.dwconv.dwconv.\\3"),
        (r"layers\.(\d)\.1\.(\d+)\.ffn\.layers\.4\.(.*)", "block<\\1>.\\2.mlp.fc2.\\3"),
        (r"layers\.(\d)\.2\.(.*)", "norm<\\1>.\\2"),
    ]
    return [(re.escape(src) + pattern, dst + repl) for pattern, repl in rules]


def mit_reshape(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Finish :func:`mit_rules`: split ``in_proj`` into ``q`` and ``kv``; flatten 1x1 kernels."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        head, _, leaf = key.rpartition(".")
        if leaf.startswith("in_proj_"):
            kind = leaf.removeprefix("in_proj_")
            q, kv = value.split([value.shape[0] // 3, 2 * value.shape[0] // 3])
            out[f"{head}.q.{kind}"] = q
            out[f"{head}.kv.{kind}"] = kv
        elif re.search(r"\.mlp\.fc[12]\.weight$", key) and value.ndim == 4:
            out[key] = value.flatten(1)
        else:
            out[key] = value
    return out


def count_from_one(key: str) -> str:
    """Replace ``<n>`` (a 0-based index a rule captured) by ``n + 1``."""
    return re.sub(r"<(\d+)>", lambda m: str(int(m.group(1)) + 1), key)


def conv_module(src: str, dst: str) -> list[Rule]:
    """An mmcv ``ConvModule`` (``conv``, ``bn``) at ``src`` -> a ``Sequential(conv, bn, ...)``."""
    rest = r"(?P<rest>.*)"
    return [
        (rf"{src}\.conv\.{rest}", rf"{dst}.0.\g<rest>"),
        (rf"{src}\.bn\.{rest}", rf"{dst}.1.\g<rest>"),
    ]
