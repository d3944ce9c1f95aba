"""ONNX export of cdkd checkpoints: dynamic axes, metadata, agreement with PyTorch, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from cdkd.cli.export import main
from cdkd.errors import CheckpointError
from cdkd.inference.onnx import export_onnx, normalization_of, write_onnx
from cdkd.models import ChangeModel
from cdkd.training.checkpoints import load_network
from tests.factories import Composer, save_checkpoint

MEAN = [123.675, 116.28, 103.53]
STD = [58.395, 57.12, 57.375]


@pytest.mark.parametrize(
    "model",
    # tinycd's graph takes the exporter about four times as long (its EfficientNet stem).
    ["fc_siam_diff", pytest.param("tinycd", marks=pytest.mark.slow)],
)
def test_exported_graph_matches_pytorch_at_two_sizes(tmp_path: Path, model: str) -> None:
    ckpt = save_checkpoint(tmp_path / f"{model}.ckpt", model)
    out = tmp_path / "onnx" / f"{model}.onnx"
    result = export_onnx(ckpt, out, size=64, atol=1e-4)
    assert result.dynamic_spatial and result.path == out
    assert [p.name for p in out.parent.iterdir()] == [out.name]
    graph = onnx.load(out)
    props = {p.key: p.value for p in graph.metadata_props}
    assert props["model"] == model
    assert json.loads(props["mean"]) == MEAN and json.loads(props["std"]) == STD
    assert props["input_size"] == "dynamic, multiples of 32"
    inputs = {
        i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
        for i in graph.graph.input
    }
    assert inputs == {name: ["batch", 3, "height", "width"] for name in ("image1", "image2")}
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    net = load_network(ckpt).eval()  # both heads predict at the input resolution
    channels = 2 if model == "fc_siam_diff" else 1
    for shape in [(1, 3, 64, 64), (2, 3, 96, 160)]:
        gen = torch.Generator().manual_seed(sum(shape))
        x1, x2 = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
        (got,) = session.run(["logits"], {"image1": x1.numpy(), "image2": x2.numpy()})
        with torch.no_grad():
            expected = net(x1, x2).numpy()
        assert got.shape == (shape[0], channels, *shape[2:]) == expected.shape
        assert np.abs(got - expected).max() <= 1e-4
        assert np.abs(expected).max() > 1e-3  # a graph of zeros would pass trivially


def test_export_rejects_a_checkpoint_that_is_not_from_cdkd(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], compose_config: Composer
) -> None:
    from cdkd.models import create_model

    plain = tmp_path / "plain.pth"
    torch.save(create_model("fc_siam_diff").state_dict(), plain)
    with pytest.raises(CheckpointError) as exc:
        export_onnx(plain, tmp_path / "x.onnx", size=32)
    assert str(exc.value) == f"{plain}: not a cdkd training checkpoint (no recorded model)"
    assert not (tmp_path / "x.onnx").exists()
    cfg = compose_config("export", f"ckpt={plain}", f"out={tmp_path / 'x.onnx'}")
    with pytest.raises(SystemExit) as code:
        main.__wrapped__(cfg)
    assert code.value.code == 1
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {exc.value}"]
    assert not (tmp_path / "x.onnx").exists()


def test_normalisation_recorded_in_the_checkpoint_wins_over_the_model_config(
    tmp_path: Path,
) -> None:
    ckpt = save_checkpoint(tmp_path / "fc.ckpt", "fc_siam_diff")
    hparams = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    assert normalization_of(ckpt, hparams) == (MEAN, STD, "conf/model/fc_siam_diff.yaml")
    hparams["meta"]["normalize"] = {"mean": [10, 20, 30], "std": [1, 2, 4]}
    assert normalization_of(ckpt, hparams) == ([10.0, 20.0, 30.0], [1.0, 2.0, 4.0], "checkpoint")


class FixedSize(ChangeModel):
    """A network with a dense layer over all pixels: it only accepts 32x32 inputs."""

    out_channels = 1

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.dense = nn.Linear(3 * 32 * 32, 16 * 16)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return self.dense((x1 - x2).flatten(1)).view(-1, 1, 16, 16)


def test_a_network_that_needs_a_fixed_size_keeps_a_dynamic_batch(tmp_path: Path) -> None:
    out = tmp_path / "fixed.onnx"
    result = write_onnx(FixedSize(), out, size=32, atol=1e-5, metadata={"model": "fixed"})
    assert not result.dynamic_spatial and "32" in (result.static_reason or "")
    assert [shape for shape, _ in result.checks] == [(1, 3, 32, 32), (2, 3, 32, 32)]
    graph = onnx.load(out)
    dims = [
        [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*graph.graph.input, *graph.graph.output]
    ]
    assert dims == [["batch", 3, 32, 32]] * 2 + [["batch", 1, 32, 32]]
    props = {p.key: p.value for p in graph.metadata_props}
    assert props["model"] == "fixed" and props["input_size"] == "32x32 (static)"
