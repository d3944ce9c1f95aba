"""Released checkpoints load as cdkd networks: format detected, official outputs, one-line errors.

The checkpoints are built from the official fixtures (``tests/models/releases.py``): the
official state dict inside an mmengine checkpoint as Open-CD saves it, the official MTKD
student checkpoint (its teachers beside it), and bare state dicts of both.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

from cdkd.errors import CheckpointError
from cdkd.models import create_model
from cdkd.models.convert import opencd
from cdkd.models.convert.formats import (
    MMENGINE,
    OPENCD,
    SIGNATURES,
    STATE,
    read_checkpoint,
    recognise,
)
from cdkd.models.registry import list_models, read_state_dict
from tests.models.official_fixtures import official_state_dict
from tests.models.releases import TEACHERS, fixture, mmengine_checkpoint, teacher_state

RTOL = 1e-4


def official_output(model: str, network: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``network``'s output on the fixture's input pair, and the official output."""
    official = fixture(model)
    x1, x2 = official.inputs.split(3, dim=1)
    with torch.no_grad():
        return network.eval()(x1, x2), official.outputs[0]


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    scale = max(1.0, float(expected.abs().max()))
    assert float((actual - expected).abs().max()) <= RTOL * scale


def one_line(exc: pytest.ExceptionInfo[CheckpointError], path: Path) -> str:
    message = str(exc.value)
    assert "\n" not in message and str(path) in message
    return message


# fc_ef: renames only; tinycd: a network that reads its head's shape from the weights;
# changer_b0: renames and reshaped attention / FFN tensors.
@pytest.mark.parametrize("model", ["fc_ef", "tinycd", "changer_b0"])
def test_mmengine_checkpoint_gives_the_official_output(model: str, tmp_path: Path) -> None:
    path = mmengine_checkpoint(model, tmp_path / "iter_200.pth")
    assert read_checkpoint(path).format == MMENGINE
    assert_close(*official_output(model, create_model(model, weights=path)))


def test_mtkd_student_checkpoint_gives_the_student_and_its_teachers(tmp_path: Path) -> None:
    path = mmengine_checkpoint("fc_ef", tmp_path / "best_mIoU.pth", teachers=TEACHERS)
    checkpoint = read_checkpoint(path)
    assert checkpoint.format == MMENGINE
    assert list(checkpoint.teachers.values()) == ["small", "medium", "large"]
    assert_close(*official_output("fc_ef", create_model("fc_ef", weights=path)))
    student = official_state_dict(fixture("fc_ef"))
    for index, name in enumerate(TEACHERS):
        state, what = read_state_dict(path, "fc_ef", network=name)
        expected = opencd.from_opencd("fc_ef", teacher_state(student, index))
        assert "teachers" in what
        assert all(torch.equal(state[k], v) for k, v in expected.items())


def test_bare_state_dicts_are_told_apart_by_their_keys(tmp_path: Path) -> None:
    official = official_state_dict(fixture("fc_ef"))
    torch.save(official, tmp_path / "opencd.pth")
    torch.save({f"teacher_s.{k}": v for k, v in official.items()} | official, tmp_path / "kd.pth")
    torch.save(opencd.from_opencd("fc_ef", official), tmp_path / "cdkd.pth")
    assert read_checkpoint(tmp_path / "opencd.pth").format == OPENCD
    assert read_checkpoint(tmp_path / "kd.pth").teachers == {"teacher_s": "small"}
    assert read_checkpoint(tmp_path / "cdkd.pth").format == STATE
    for name in ("opencd.pth", "kd.pth", "cdkd.pth"):
        assert_close(*official_output("fc_ef", create_model("fc_ef", weights=tmp_path / name)))


def test_foreign_objects_of_an_mmengine_checkpoint_are_read_as_placeholders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mmengine pickles its message hub's HistoryBuffer objects; their code is never imported."""
    names = ("mmengine", "mmengine.logging", "mmengine.logging.history_buffer")
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    buffer = type("HistoryBuffer", (), {"__module__": names[-1]})
    sys.modules[names[-1]].HistoryBuffer = buffer  # type: ignore[attr-defined]
    path = mmengine_checkpoint("fc_ef", tmp_path / "iter_200.pth")
    saved = torch.load(path, weights_only=True)
    saved["message_hub"]["log_scalars"] = {"loss": buffer()}
    torch.save(saved, path)
    for name in names:
        monkeypatch.delitem(sys.modules, name)
    assert_close(*official_output("fc_ef", create_model("fc_ef", weights=path)))


def test_a_checkpoint_of_another_network_is_one_line(tmp_path: Path) -> None:
    path = mmengine_checkpoint("fc_ef", tmp_path / "fc_ef.pth")
    with pytest.raises(CheckpointError) as exc:
        create_model("snunet_c16", weights=path)
    assert "backbone.conv11" in one_line(exc, path)  # the first unmatched keys are named


def test_a_config_of_another_architecture_names_both(tmp_path: Path) -> None:
    config = "model = dict(type='DIEncoderDecoder', backbone=dict(type='FC_EF', in_channels=6))"
    path = mmengine_checkpoint("fc_ef", tmp_path / "fc_ef.pth", config=config)
    assert_close(*official_output("fc_ef", create_model("fc_ef", weights=path)))
    with pytest.raises(CheckpointError) as exc:
        create_model("snunet_c16", weights=path)
    message = one_line(exc, path)
    assert "fc_ef" in message and "snunet_c16" in message


def test_a_truncated_checkpoint_is_one_line(tmp_path: Path) -> None:
    path = mmengine_checkpoint("fc_ef", tmp_path / "iter_200.pth")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError) as exc:
        create_model("fc_ef", weights=path)
    assert "truncated" in one_line(exc, path)


def test_extra_unknown_keys_are_one_line_naming_them(tmp_path: Path) -> None:
    extra = {"decode_head.extra_conv.weight": torch.zeros(2, 2, 1, 1)}
    path = mmengine_checkpoint("fc_ef", tmp_path / "iter_200.pth", extra=extra)
    with pytest.raises(CheckpointError) as exc:
        create_model("fc_ef", weights=path)
    assert "unexpected decode_head.extra_conv.weight" in one_line(exc, path)


def test_a_network_without_mapping_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = mmengine_checkpoint("fc_ef", tmp_path / "iter_200.pth")
    monkeypatch.delitem(opencd.MAPPINGS, "fc_ef")
    with pytest.raises(CheckpointError) as exc:
        create_model("fc_ef", weights=path)
    assert "'fc_ef'" in one_line(exc, path)


def test_every_network_has_a_config_signature() -> None:
    assert sorted(SIGNATURES) == list_models()


@pytest.mark.parametrize(
    ("text", "network"),
    [
        ("backbone=dict(type='IA_MixVisionTransformer', embed_dims=32)", "changer_b0"),
        ('backbone=dict(type="IA_MixVisionTransformer", embed_dims=64)', "changer_b1"),
        ("backbone=dict(type='mmseg.MixVisionTransformer', embed_dims=64)", "changeformer_b1"),
        ("type='DistillBAN', image_encoder=dict(embed_dims=768, num_layers=9)", "ban_vit_b"),
        ("type='BAN', vit='augreg_B_16-i21k.pth', embed_dims=768", "ban_vit_b_in21k"),
        ("type='ChangeStarHead', seg_head=dict(type='mmseg.UPerHead')", "changestar_upernet"),
        ("type='DistillDIEncoderDecoder_S', backbone=dict(type='FC_Siam_diff')", "fc_siam_diff"),
    ],
)
def test_config_texts_are_recognised(text: str, network: str) -> None:
    assert recognise(text) == [network]
