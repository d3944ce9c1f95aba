"""``python -m cdkd.export ckpt=PATH``: a trained network as an ONNX graph for deployment.

See :mod:`cdkd.inference.onnx` for the graph's inputs, outputs and metadata.
"""

from __future__ import annotations

from omegaconf import DictConfig
from rich.console import Console

from cdkd.cli.common import command
from cdkd.errors import ConfigError
from cdkd.inference.onnx import INPUT_NAMES, export_onnx


@command("export")
def main(cfg: DictConfig) -> None:
    """Export ``cfg.ckpt`` in ``cfg.format`` and print what was written and checked."""
    if cfg.format != "onnx":
        raise ConfigError(f"format={cfg.format}: only 'onnx' is supported")
    result = export_onnx(
        cfg.ckpt,
        cfg.out,
        size=int(cfg.size),
        opset=cfg.opset,
        verify=bool(cfg.verify),
        atol=float(cfg.atol),
    )
    axes = "batch, height, width" if result.dynamic_spatial else "batch"
    console = Console()
    console.print(
        f"exported {result.metadata['model']} to {result.path} (dynamic axes: {axes})",
        highlight=False,
    )
    if result.static_reason:
        console.print(
            f"spatial size fixed: {result.static_reason}", highlight=False, soft_wrap=True
        )
    for shape, diff in result.checks:
        shown = "x".join(str(s) for s in shape)
        console.print(f"onnxruntime vs PyTorch at {shown}: max |diff| {diff:.2e}", highlight=False)
    console.print(
        f"inputs: {', '.join(INPUT_NAMES)} = (RGB 0-255 - mean) / std, mean "
        f"{result.metadata['mean']}, std {result.metadata['std']}",
        highlight=False,
        soft_wrap=True,
    )
