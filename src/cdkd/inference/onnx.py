"""A trained network as an ONNX graph for deployment, checked against PyTorch.

The graph takes ``image1`` and ``image2`` (float32 ``[B, 3, H, W]``, RGB normalised as
``(pixel - mean) / std`` with pixels in 0-255) and returns ``logits`` (float32
``[B, C, H, W]`` at the input resolution). Batch and spatial size are dynamic where the
network allows it (H and W multiples of 32, the padding the project's inference uses);
otherwise the spatial size is fixed at ``size``. The normalisation, the model name and how to
read the logits are stored in the graph's ``metadata_props``. TorchScript is not offered: it
is deprecated in current PyTorch.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from cdkd.config import config_dir, model_config
from cdkd.errors import CheckpointError, ConfigError, DataError, brief
from cdkd.models import ChangeModel
from cdkd.runs.meta import CheckpointMeta

#: Spatial sizes of a dynamic graph must be multiples of this (as in sliding-window inference).
SIZE_MULTIPLE = 32
INPUT_NAMES = ("image1", "image2")
OUTPUT_NAME = "logits"


class FullResolution(nn.Module):
    """A change network whose logits are resized to the input size: the exported computation."""

    def __init__(self, net: ChangeModel) -> None:
        super().__init__()
        self.net = net

    def forward(self, image1: torch.Tensor, image2: torch.Tensor) -> torch.Tensor:
        logits = self.net(image1, image2).float()
        return F.interpolate(logits, size=image1.shape[-2:], mode="bilinear", align_corners=False)


@dataclass
class ExportResult:
    """What was written, with which axes, and how the graph was checked.

    Attributes:
        path: the ``.onnx`` file.
        dynamic_spatial: whether height and width are dynamic (batch always is).
        metadata: the graph's ``metadata_props``.
        checks: ``(input shape, max |onnxruntime - PyTorch|)`` of each verification run.
        static_reason: why the spatial size had to be fixed (the exporter's message).
    """

    path: Path
    dynamic_spatial: bool
    metadata: dict[str, str]
    checks: list[tuple[tuple[int, ...], float]] = field(default_factory=list)
    static_reason: str | None = None


def normalization_of(ckpt: Path, hparams: dict[str, Any]) -> tuple[list[float], list[float], str]:
    """``(mean, std, source)`` the network was trained with, in 0-255 units.

    The checkpoint's recorded ``meta.normalize`` when present, else the model config's default
    (``conf/model/<name>.yaml``), which is what training records.
    """
    normalize = CheckpointMeta.from_hparams(hparams, ckpt).normalize
    source = "checkpoint"
    if not normalize:
        path = Path(config_dir()) / "model" / f"{hparams['model']}.yaml"
        if not path.is_file():
            raise CheckpointError(
                f"{ckpt}: no normalisation recorded and no config {path} to take it from"
            )
        loaded: Any = OmegaConf.to_container(model_config(hparams["model"]).normalize)
        normalize = loaded
        source = f"conf/model/{path.name}"
    if not isinstance(normalize, Mapping):
        raise CheckpointError(f"{ckpt}: normalisation {normalize} is not a mapping of mean and std")
    mean, std = [float(v) for v in normalize["mean"]], [float(v) for v in normalize["std"]]
    if len(mean) != 3 or len(std) != 3:
        raise CheckpointError(f"{ckpt}: normalisation {normalize} is not three means and stds")
    return mean, std, source


def export_onnx(
    ckpt: str | Path,
    out: str | Path | None = None,
    size: int = 512,
    opset: int | None = None,
    verify: bool = True,
    atol: float = 1e-3,
) -> ExportResult:
    """Export the network of a cdkd checkpoint to ONNX (see :func:`write_onnx`).

    Args:
        ckpt: a cdkd training checkpoint (baseline, teacher or distilled student).
        out: the ``.onnx`` file; default: ``ckpt`` with the suffix ``.onnx``.
        size: see :func:`write_onnx`.
        opset: see :func:`write_onnx`.
        verify: see :func:`write_onnx`.
        atol: see :func:`write_onnx`.

    Raises:
        CheckpointError: not a readable cdkd checkpoint.
    """
    from cdkd.files import sha256_of
    from cdkd.models.checkpoint import load_network, read_hparams

    ckpt = Path(ckpt)
    hparams = read_hparams(ckpt)
    mean, std, source = normalization_of(ckpt, hparams)
    metadata = {
        "model": str(hparams["model"]),
        "mean": json.dumps(mean),
        "std": json.dumps(std),
        "normalization": "RGB pixels in 0-255, (pixel - mean) / std per channel",
        "normalization_source": source,
        "stage": str(CheckpointMeta.from_hparams(hparams, ckpt).stage),
        "source_checkpoint": ckpt.name,
        "source_sha256": sha256_of(ckpt),
    }
    out = Path(out) if out is not None else ckpt.with_suffix(".onnx")
    return write_onnx(load_network(ckpt), out, size, opset, verify, atol, metadata)


def write_onnx(
    net: ChangeModel,
    out: str | Path,
    size: int = 512,
    opset: int | None = None,
    verify: bool = True,
    atol: float = 1e-3,
    metadata: Mapping[str, str] | None = None,
) -> ExportResult:
    """Write ``net`` as an ONNX graph with dynamic axes where it allows them, atomically.

    Args:
        net: the network (put in eval mode here).
        out: the ``.onnx`` file.
        size: side of the example input traced (a multiple of 32); the fixed size of a graph
            whose network does not allow dynamic spatial sizes.
        opset: ONNX opset; ``None`` for the exporter's default.
        verify: before writing, run the graph with onnxruntime (CPU) at the traced size and
            at batch 2 (and another size when it is dynamic), and compare with PyTorch.
        atol: largest accepted absolute logit difference in the verification.
        metadata: extra ``metadata_props`` (the head's description is always added).

    Raises:
        ConfigError: ``size`` not a positive multiple of 32.
        DataError: the exported graph disagrees with PyTorch beyond ``atol``.
    """
    import onnx

    from cdkd.files import atomic_path

    if size < SIZE_MULTIPLE or size % SIZE_MULTIPLE:
        raise ConfigError(f"size={size}: must be a positive multiple of {SIZE_MULTIPLE}")
    out = Path(out)
    wrapper = FullResolution(net.eval()).eval()
    # Batch 2: an example of batch 1 would let the tracer specialise the batch axis to 1.
    generator = torch.Generator().manual_seed(0)
    example = tuple(torch.randn(2, 3, size, size, generator=generator) for _ in INPUT_NAMES)
    program, static_reason = _export(wrapper, example, opset)
    proto = program.model_proto
    _name_axes(proto)
    props = {
        **(metadata or {}),
        "out_channels": str(net.out_channels),
        "output_space": str(getattr(net, "output_space", "logits")),
        "output": (
            "logits [B, C, H, W] at the input size; C=2: (unchanged, changed), changed where "
            "logits[:, 1] > logits[:, 0]; C=1: changed where logits[:, 0] > 0"
        ),
        "input_size": (
            f"dynamic, multiples of {SIZE_MULTIPLE}"
            if static_reason is None
            else f"{size}x{size} (static)"
        ),
    }
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    other = (
        (size + SIZE_MULTIPLE, size + 2 * SIZE_MULTIPLE) if static_reason is None else (size, size)
    )
    shapes = [(1, 3, size, size), (2, 3, *other)]
    result = ExportResult(out, static_reason is None, props, [], static_reason)
    with atomic_path(out) as tmp:
        onnx.save_model(proto, tmp)
        if verify:
            result.checks = [(shape, _compare(wrapper, tmp, shape)) for shape in shapes]
            worst = max(diff for _, diff in result.checks)
            if worst > atol:
                raise DataError(
                    f"{out}: onnxruntime differs from PyTorch by {worst:.3g} (> atol {atol:g}); "
                    "nothing written"
                )
    return result


def _export(
    wrapper: FullResolution, example: tuple[torch.Tensor, ...], opset: int | None
) -> tuple[Any, str | None]:
    """The ONNX program with dynamic batch and spatial axes, or static ones if it must.

    Returns the program and, when the spatial size had to be fixed, the exporter's reason.
    """
    from torch.export import Dim

    batch = Dim("batch", min=1, max=4096)
    rows = Dim("rows32", min=1, max=4096)
    cols = Dim("cols32", min=1, max=4096)
    dynamic = {0: batch, 2: SIZE_MULTIPLE * rows, 3: SIZE_MULTIPLE * cols}
    torch_log = logging.getLogger("torch")
    level = torch_log.level
    torch_log.setLevel(logging.CRITICAL)  # a failed attempt logs its tracebacks as errors
    try:
        return _export_once(wrapper, example, (dynamic, dynamic), opset), None
    except Exception as exc:  # the exporter raises many types; retry with the batch axis only
        reason = _root_cause(exc)
    finally:
        torch_log.setLevel(level)
    fixed = {0: batch}
    return _export_once(wrapper, example, (fixed, fixed), opset), reason


def _root_cause(exc: BaseException) -> str:
    """First line of the innermost cause of ``exc``, without terminal colour codes."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return brief(exc)


def _export_once(
    wrapper: FullResolution,
    example: tuple[torch.Tensor, ...],
    dynamic_shapes: tuple[dict[int, Any], dict[int, Any]],
    opset: int | None,
) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.onnx.export(
            wrapper,
            example,
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_shapes=dynamic_shapes,
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )


def _name_axes(proto: Any) -> None:
    """Rename the exporter's symbolic sizes to ``batch``, ``height`` and ``width``."""
    names = {f"{SIZE_MULTIPLE}*rows32": "height", f"{SIZE_MULTIPLE}*cols32": "width"}
    graph = proto.graph
    for value in [*graph.input, *graph.output, *graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in names:
                dim.dim_param = names[dim.dim_param]


def _compare(wrapper: FullResolution, path: Path, shape: tuple[int, ...]) -> float:
    """Largest absolute logit difference of onnxruntime (CPU) and PyTorch at ``shape``."""
    import onnxruntime as ort

    generator = torch.Generator().manual_seed(1)
    x1, x2 = torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run([OUTPUT_NAME], {"image1": x1.numpy(), "image2": x2.numpy()})
    with torch.inference_mode():
        expected = wrapper(x1, x2).numpy()
    if got.shape != expected.shape:
        raise DataError(
            f"{path}: graph output {got.shape} at input {shape}, expected {expected.shape}"
        )
    return float(abs(got - expected).max())
