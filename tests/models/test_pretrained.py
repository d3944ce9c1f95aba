"""Pretrained parts: local files in each supported format, the hub cache, the offline error.

Every test runs with the network blocked (a socket connect raises) and an empty hub cache
in ``tmp_path``; weight files are written there with random values.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import socket
from pathlib import Path
from typing import Any

import pytest
import segmentation_models_pytorch as smp
import timm
import torch
from safetensors.torch import save_file

from cdkd.cli.weights import part_line
from cdkd.errors import CheckpointError, ConfigError
from cdkd.models import create_model, get_entry
from cdkd.models.pretrained import PARTS, WeightsUnavailableError, fetch, parts_of
from cdkd.training.run import check_config, pretrained_files, train
from tests.factories import Composer


@pytest.fixture(autouse=True)
def _no_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty hub cache, downloads allowed but every connection refused."""
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return cache


def _random(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with every floating tensor replaced by fresh random values."""
    return {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}


@pytest.fixture
def _config(compose_config: Composer) -> Composer:
    """``_config(*overrides)``: the training config."""
    return functools.partial(compose_config, "train")


def _assert_loaded(own: dict[str, torch.Tensor], file: dict[str, torch.Tensor], keys: dict) -> None:
    """Each network key equals the file tensor it was loaded from."""
    for mine, theirs in keys.items():
        torch.testing.assert_close(own[mine], file[theirs], msg=mine)


# --- the local-file path, one format at a time -------------------------------------------------


def test_resnet18d_timm_file_loads_into_resnet_v1c(tmp_path: Path) -> None:
    state = _random(timm.create_model("resnet18d", num_classes=0).state_dict())
    path = tmp_path / "resnet18d.safetensors"
    save_file(state, str(path))
    model = create_model("stanet_base", pretrained=True, backbone_weights=str(path))
    own = model.backbone.state_dict()
    _assert_loaded(
        own,
        state,
        {
            "conv1.0.weight": "conv1.0.weight",
            "bn1.running_var": "bn1.running_var",
            "layer2.0.downsample.0.weight": "layer2.0.downsample.1.weight",
            "layer4.1.bn2.bias": "layer4.1.bn2.bias",
        },
    )


def test_mmseg_resnet18_v1c_checkpoint_loads_with_backbone_prefix(tmp_path: Path) -> None:
    model = create_model("bit_r18")
    stem = {"conv1.0.": "stem.0.", "conv1.1.": "stem.1.", "conv1.3.": "stem.3."}
    stem |= {"conv1.4.": "stem.4.", "conv1.6.": "stem.6.", "bn1.": "stem.7."}
    release = {}
    for key, value in _random(model.backbone.state_dict()).items():
        for ours, theirs in stem.items():
            key = key.replace(ours, theirs) if key.startswith(ours) else key
        release[f"backbone.{key}"] = value
    release["decode_head.conv_seg.weight"] = torch.zeros(2, 4)
    path = tmp_path / "resnet18_v1c.pth"
    torch.save({"state_dict": release, "meta": {"epoch": 1}}, path)
    loaded = create_model("bit_r18", backbone_weights=str(path)).backbone.state_dict()
    _assert_loaded(
        loaded,
        release,
        {
            "conv1.3.weight": "backbone.stem.3.weight",
            "bn1.weight": "backbone.stem.7.weight",
            "layer3.0.downsample.1.running_mean": "backbone.layer3.0.downsample.1.running_mean",
        },
    )


def test_resnest50d_timm_file_loads_into_changer_s50(tmp_path: Path) -> None:
    state = _random(timm.create_model("resnest50d", num_classes=0).state_dict())
    path = tmp_path / "resnest50d.pth"
    torch.save(state, path)
    own = create_model("changer_s50", pretrained=True, backbone_weights=str(path))
    own_state = own.backbone.state_dict()
    assert all(torch.equal(own_state[k], state[k]) for k in own_state)


def test_efficientnet_b4_timm_file_loads_into_tinycd(tmp_path: Path) -> None:
    state = _random(timm.create_model("efficientnet_b4").state_dict())
    path = tmp_path / "efficientnet_b4.pth"
    torch.save(state, path)
    own = create_model("tinycd", backbone_weights=str(path)).state_dict()
    _assert_loaded(
        own,
        state,
        {
            "stem.0.weight": "conv_stem.weight",
            "stem.1.running_mean": "bn1.running_mean",
            "stages.2.3.conv_pwl.weight": "blocks.2.3.conv_pwl.weight",
        },
    )


def _mmseg_mit(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """smp MiT keys written the way mmseg's MixVisionTransformer stores them."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        head, rest = key.split(".", 1)
        stage = int(head[-1]) - 1
        if head.startswith("patch_embed"):
            out[f"layers.{stage}.0.{rest.replace('proj.', 'projection.')}"] = value
        elif head.startswith("norm"):
            out[f"layers.{stage}.2.{rest}"] = value
        else:
            block, rest = rest.split(".", 1)
            prefix = f"layers.{stage}.1.{block}."
            if rest.startswith("attn.kv."):
                continue
            if rest.startswith("attn.q."):
                kind = rest.rsplit(".", 1)[1]
                kv = state[key.replace("attn.q.", "attn.kv.")]
                out[f"{prefix}attn.attn.in_proj_{kind}"] = torch.cat([value, kv])
                continue
            renames = {"attn.proj.": "attn.attn.out_proj.", "mlp.dwconv.dwconv.": "ffn.layers.1."}
            renames |= {"mlp.fc1.": "ffn.layers.0.", "mlp.fc2.": "ffn.layers.4."}
            for ours, theirs in renames.items():
                if rest.startswith(ours):
                    if ours.startswith("mlp.fc") and value.dim() == 2:
                        value = value[:, :, None, None]
                    rest = theirs + rest[len(ours) :]
            out[prefix + rest] = value
    return out


@pytest.mark.parametrize("layout", ["smp", "segformer", "mmseg"])
def test_mit_file_loads_in_each_layout(tmp_path: Path, layout: str) -> None:
    state = _random(smp.encoders.get_encoder("mit_b0", weights=None).state_dict())
    if layout == "smp":
        path = tmp_path / "mit_b0.safetensors"
        save_file(state, str(path))
    else:
        written = (
            _mmseg_mit(state) if layout == "mmseg" else {**state, "head.weight": torch.ones(3)}
        )
        path = tmp_path / "mit_b0.pth"
        torch.save({"state_dict": written}, path)
    model = create_model("changer_b0", pretrained=True, backbone_weights=str(path))
    own = model.backbone.state_dict()
    assert own.keys() == state.keys()
    for key in own:
        torch.testing.assert_close(own[key], state[key], msg=key)


def test_ban_parts_load_by_name_and_a_single_path_is_refused(tmp_path: Path) -> None:
    overrides = dict(get_entry("ban_vit_b").info.test_overrides)
    side = _random(smp.encoders.get_encoder("mit_b0", weights=None).state_dict())
    path = tmp_path / "side.safetensors"
    save_file(side, str(path))
    model = create_model("ban_vit_b", backbone_weights={"side": str(path)}, **overrides)
    torch.testing.assert_close(
        model.branch.mit.state_dict()["block2.1.attn.kv.weight"], side["block2.1.attn.kv.weight"]
    )
    with pytest.raises(ConfigError, match=r"2 pretrained parts \(encoder, side\)"):
        create_model("ban_vit_b", backbone_weights=str(path), **overrides)
    with pytest.raises(ConfigError, match="has no part 'vit'"):
        create_model("ban_vit_b", backbone_weights={"vit": str(path)}, **overrides)


def test_openai_clip_release_loads_into_ban_encoder(tmp_path: Path) -> None:
    overrides = dict(get_entry("ban_vit_b").info.test_overrides)
    width, heads, grid = 64, 2, 32 // 16
    visual = {
        "conv1.weight": torch.randn(width, 3, 16, 16),
        "class_embedding": torch.randn(width),
        "positional_embedding": torch.randn(grid * grid + 1, width),
        "ln_pre.weight": torch.randn(width),
        "ln_pre.bias": torch.randn(width),
        "ln_post.weight": torch.randn(width),
        "ln_post.bias": torch.randn(width),
        "proj": torch.randn(width, 32),
    }
    for i in range(3):
        block = f"transformer.resblocks.{i}."
        for name, shape in {
            "ln_1.weight": (width,),
            "ln_1.bias": (width,),
            "attn.in_proj_weight": (3 * width, width),
            "attn.in_proj_bias": (3 * width,),
            "attn.out_proj.weight": (width, width),
            "attn.out_proj.bias": (width,),
            "ln_2.weight": (width,),
            "ln_2.bias": (width,),
            "mlp.c_fc.weight": (4 * width, width),
            "mlp.c_fc.bias": (4 * width,),
            "mlp.c_proj.weight": (width, 4 * width),
            "mlp.c_proj.bias": (width,),
        }.items():
            visual[block + name] = torch.randn(shape)
    release = {f"visual.{k}": v for k, v in visual.items()}
    release["token_embedding.weight"] = torch.randn(10, width)
    path = tmp_path / "ViT-B-16.pt"
    torch.save(release, path)
    assert heads == overrides["encoder_overrides"]["num_heads"]
    model = create_model("ban_vit_b", backbone_weights={"encoder": str(path)}, **overrides)
    own = model.encoder.state_dict()
    torch.testing.assert_close(own["patch_embed.proj.weight"], visual["conv1.weight"])
    torch.testing.assert_close(own["cls_token"][0, 0], visual["class_embedding"])
    torch.testing.assert_close(
        own["blocks.2.attn.qkv.weight"], visual["transformer.resblocks.2.attn.in_proj_weight"]
    )
    torch.testing.assert_close(own["norm_pre.weight"], visual["ln_pre.weight"])


def test_a_file_for_another_network_is_one_line(tmp_path: Path) -> None:
    state = _random(smp.encoders.get_encoder("mit_b0", weights=None).state_dict())
    path = tmp_path / "mit_b0.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"mit_b0\.pth: does not fit changer_b1 backbone"):
        create_model("changer_b1", pretrained=True, backbone_weights=str(path))


# --- the hub cache, the offline error, the command-line tool ------------------------------------


def _cache_file(cache: Path, model: str, state: dict[str, torch.Tensor]) -> Path:
    """Put ``state`` where the hub cache keeps ``model``'s only part."""
    (part,) = parts_of(model)
    source = part.source
    repo = cache / f"models--{source.repo_id.replace('/', '--')}"
    revision = source.revision or "0" * 40
    if source.revision is None:
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(revision)
    path = repo / "snapshots" / revision / source.filename
    path.parent.mkdir(parents=True)
    save_file(state, str(path))
    return path


def test_hub_cache_is_used_and_listed(_no_network: Path, capsys: pytest.CaptureFixture) -> None:
    state = _random(smp.encoders.get_encoder("mit_b0", weights=None).state_dict())
    path = _cache_file(_no_network, "changer_b0", state)
    model = create_model("changer_b0", pretrained=True)
    torch.testing.assert_close(model.backbone.state_dict()["norm4.weight"], state["norm4.weight"])
    line = part_line("changer_b0", parts_of("changer_b0")[0], _no_network)
    assert f"cached {path.resolve()}" in line or f"cached {path}" in line
    assert (
        f"sha256 {hashlib.sha256(path.read_bytes()).hexdigest()}" in line
        and "smp mit_b0.imagenet" in line
    )
    assert "not cached" in part_line("changer_b1", parts_of("changer_b1")[0], _no_network)


def test_fetch_without_network_is_one_line(_no_network: Path) -> None:
    with pytest.raises(WeightsUnavailableError, match=r"download of smp-hub/mit_b1\.imagenet/"):
        fetch(["changer_b1"], _no_network)


def test_every_part_names_a_hub_file() -> None:
    for model, parts in PARTS.items():
        for part in parts:
            assert part.source.repo_id.count("/") == 1, (model, part)


@pytest.mark.parametrize("offline", ["1", None])
def test_training_without_weights_stops_before_anything_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _config: Composer, offline: str | None
) -> None:
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    cfg = _config(
        "model=changer_b1",
        "data=folder",
        f"data.root={tmp_path / 'data'}",
        f"paths.runs_dir={tmp_path / 'runs'}",
    )
    with pytest.raises(WeightsUnavailableError) as error:
        train(cfg)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("changer_b1 needs pretrained weights smp mit_b1.imagenet")
    assert "models--smp-hub--mit_b1.imagenet" in message
    assert "python -m cdkd.weights fetch models=[changer_b1]" in message
    assert ("HF_HUB_OFFLINE" if offline else "network is unreachable") in message
    assert not (tmp_path / "runs").exists()


def test_real_data_starts_pretrained_and_synthetic_random(_config: Composer) -> None:
    assert _config("model=changer_b1", "data=jl1cd").model.pretrained is True
    assert _config("model=changer_b1", "data=sysucd").model.pretrained is True
    assert _config("model=changer_b1").model.pretrained is False
    assert (
        _config("model=changer_b1", "data=jl1cd", "model.pretrained=false").model.pretrained
        is False
    )
    assert _config("model=changer_b1", "model.pretrained=true").model.pretrained is True
    # Changer-R18/S50 train from scratch in the reference; fc_ef has nothing pretrained.
    assert _config("model=changer_r18", "data=jl1cd").model.pretrained is False
    assert _config("model=fc_ef", "data=jl1cd").model.pretrained is False


def test_random_reference_part_on_real_data_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, _config: Composer
) -> None:
    vit = tmp_path / "clip.pth"
    vit.write_bytes(b"not read here")
    overrides = [
        "model=ban_vit_b",
        "model.pretrained=false",
        f"model.backbone_weights={{encoder:'{vit}'}}",
    ]
    with caplog.at_level(logging.WARNING, logger="cdkd.training.run"):
        files = pretrained_files(_config(*overrides, "data=folder", f"data.root={tmp_path}"))
    assert files == {"encoder": vit}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "side (branch.mit smp mit_b2)" in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cdkd.training.run"):
        pretrained_files(_config(*overrides))  # synthetic data: random by design
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_old_encoder_weights_option_is_refused(_config: Composer) -> None:
    cfg = _config("model=ban_vit_b", "+model.kwargs.encoder_weights=clip.pth")
    with pytest.raises(ConfigError, match=r"replaced by model\.backbone_weights"):
        check_config(cfg)
