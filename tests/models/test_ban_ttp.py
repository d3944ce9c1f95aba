"""Foundation-model networks: BAN (three ViT encoders) and TTP (SAM with LoRA and time gates)."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

from cdkd.errors import CheckpointError, ConfigError
from cdkd.models import create_model, get_entry
from cdkd.models.complexity import count_gmacs, count_parameters
from cdkd.models.zoo.ban import BAN
from cdkd.models.zoo.ttp import LoRALinear, TimeGate, TimeTravellingPixels
from tests.factories import image_pair

#: Exact sizes of the JL1-CD builds (Table II: 91.346, 112.611 and 254.987 M; the IN21K build
#: with Open-CD's 1,536-parameter pre-norm).
BAN_PARAMS = {
    "ban_vit_b": (91_346_118, 26_811_846),
    "ban_vit_b_in21k": (112_610_502, 26_811_846),
    "ban_vit_l": (254_987_206, 27_059_142),
}
BAN_SMALL = get_entry("ban_vit_b").info.test_overrides
TTP_SMALL = get_entry("ttp_sam_l").info.test_overrides
#: The small test encoders: timm constructor arguments of the quick-test ViT and SAM.
SMALL_VIT = BAN_SMALL["encoder_overrides"]
SAM_SMALL = TTP_SMALL["encoder_overrides"]


def _trainable(model: torch.nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_ban_vit_b_size_and_frozen_encoder() -> None:
    model = create_model("ban_vit_b")
    total, trainable = BAN_PARAMS["ban_vit_b"]
    assert count_parameters(model) == total
    assert count_parameters(model, trainable_only=True) == trainable
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert len(model.encoder.blocks) == 9
    assert isinstance(model.encoder.norm, torch.nn.Identity)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ban_vit_b_in21k", "ban_vit_l"])
def test_ban_large_variant_sizes(name: str) -> None:
    model = create_model(name)
    assert (count_parameters(model), count_parameters(model, trainable_only=True)) == (
        BAN_PARAMS[name]
    )


def test_ban_output_shape_and_encoder_input_resolution() -> None:
    model = create_model("ban_vit_l", **BAN_SMALL).eval()
    seen: list[tuple[int, ...]] = []
    model.encoder.patch_embed.register_forward_pre_hook(
        lambda _module, args: seen.append(tuple(args[0].shape))
    )
    with torch.no_grad():
        logits = model(*image_pair(batch=2, size=64))
    assert logits.shape == (2, 2, 16, 16)
    # Both dates go through the ViT at its own resolution, not the input's.
    assert seen == [(4, 3, 32, 32)]


def test_ban_trains_only_the_side_branch_and_decoder() -> None:
    model = create_model("ban_vit_b", **BAN_SMALL).train()
    model(*image_pair(size=32)).sum().backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable)
    assert _trainable(model) == {
        n for n, _ in model.named_parameters() if n.startswith(("branch.", "decoder."))
    }


def test_ban_loads_local_encoder_weights(tmp_path: Path) -> None:
    overrides = {"num_classes": 0, "img_size": 32, **SMALL_VIT}
    source = timm.create_model("vit_base_patch16_clip_quickgelu_224", **overrides)
    path = tmp_path / "clip.pth"
    torch.save(source.state_dict(), path)
    model = create_model("ban_vit_b", backbone_weights={"encoder": str(path)}, **BAN_SMALL)
    # The whole released network loads, then blocks after the last tap and the final norm go.
    assert len(model.encoder.blocks) == BAN_SMALL["encoder_taps"][-1] + 1
    assert isinstance(model.encoder.norm, torch.nn.Identity)
    for key in ("pos_embed", "patch_embed.proj.weight", "blocks.2.mlp.fc2.weight"):
        torch.testing.assert_close(model.encoder.state_dict()[key], source.state_dict()[key])
    assert not any(p.requires_grad for p in model.encoder.parameters())


def test_ban_in21k_pre_norm_stays_at_its_init_over_a_release_without_it(tmp_path: Path) -> None:
    overrides = {"num_classes": 0, "img_size": 32, **SMALL_VIT}
    source = timm.create_model("vit_base_patch16_224", **overrides)
    assert isinstance(source.norm_pre, torch.nn.Identity)
    path = tmp_path / "augreg.pth"
    torch.save(source.state_dict(), path)
    model = create_model("ban_vit_b_in21k", backbone_weights={"encoder": str(path)}, **BAN_SMALL)
    norm = model.encoder.norm_pre
    assert isinstance(norm, torch.nn.LayerNorm) and norm.eps == 1e-6
    torch.testing.assert_close(norm.weight, torch.ones_like(norm.weight))
    torch.testing.assert_close(norm.bias, torch.zeros_like(norm.bias))
    # The augreg patch embedding keeps its bias (timm's pre_norm switch would drop it).
    torch.testing.assert_close(
        model.encoder.patch_embed.proj.bias, source.state_dict()["patch_embed.proj.bias"]
    )


def test_missing_encoder_weights_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(
        CheckpointError, match=r"clip\.pth: ban_vit_b encoder weights file not found"
    ):
        create_model(
            "ban_vit_b", backbone_weights={"encoder": str(tmp_path / "clip.pth")}, **BAN_SMALL
        )


def test_ttp_full_size_on_meta_device() -> None:
    with torch.device("meta"):
        model = TimeTravellingPixels()
        learned_gates = TimeTravellingPixels(train_gates=True)
    assert count_parameters(model) == count_parameters(learned_gates) == 353_261_186
    # Gates frozen by default, as the reference's peft wrapping leaves them.
    assert count_parameters(model, trainable_only=True) == 6_210_178
    assert count_parameters(learned_gates, trainable_only=True) == 48_235_138
    gated = [i for i, block in enumerate(model.encoder.blocks) if block.gate is not None]
    assert gated == [i for i in range(24) if i not in (5, 11, 17, 23)]
    assert all(isinstance(b.block.attn.qkv, LoRALinear) for b in model.encoder.blocks)


def test_ttp_output_is_the_fixed_head_grid() -> None:
    model = create_model("ttp_sam_l", **TTP_SMALL).eval()
    with torch.no_grad():
        assert model(*image_pair(batch=3, size=64)).shape == (3, 2, 16, 16)
        # The grid does not follow the input size.
        assert model(*image_pair(batch=1, size=32)).shape == (1, 2, 16, 16)


@pytest.mark.parametrize(("train_gates", "train_neck"), [(True, False), (False, True)])
def test_ttp_freezing(train_gates: bool, train_neck: bool) -> None:
    model = create_model("ttp_sam_l", train_gates=train_gates, train_neck=train_neck, **TTP_SMALL)
    expected = set()
    for name, _ in model.named_parameters():
        lora = ".lora_a." in name or ".lora_b." in name or name.endswith("attn.qkv.base.bias")
        gate = ".gate." in name and train_gates
        neck = name.startswith("encoder.neck.") and train_neck
        if lora or gate or neck or name.startswith(("fpn.", "head.")):
            expected.add(name)
    assert _trainable(model) == expected
    assert any(".gate." in n for n in expected) == train_gates
    assert "encoder.blocks.0.block.attn.qkv.base.weight" not in expected


def test_lora_starts_as_the_original_layer_then_adds_the_scaled_update() -> None:
    torch.manual_seed(0)
    base = torch.nn.Linear(6, 9)
    lora = LoRALinear(base, rank=2, alpha=4.0, dropout=0.0)
    x = torch.randn(5, 6)
    torch.testing.assert_close(lora(x), base(x))
    with torch.no_grad():
        lora.lora_b.weight.fill_(1.0)
    update = (x @ lora.lora_a.weight.T).sum(dim=1, keepdim=True) * 2.0  # alpha / rank = 2
    torch.testing.assert_close(lora(x), base(x) + update.expand(5, 9))


def test_time_gate_updates_the_first_date_then_the_second_from_it() -> None:
    gate = TimeGate(dim=1)
    with torch.no_grad():
        gate.down_channel.weight.zero_()  # sigmoid(0) = 0.5 everywhere
        for linear in (gate.soft_ffn[0], gate.soft_ffn[2]):
            linear.weight.fill_(1.0)
            linear.bias.zero_()
    out = gate(torch.tensor([[2.0], [4.0]]))  # date 1 = 2, date 2 = 4 (one token each)
    x0 = 2.0 + F.gelu(torch.tensor(0.5 * 4.0))
    x1 = 4.0 + F.gelu(0.5 * x0)
    torch.testing.assert_close(out, torch.stack([x0, x1]).view(2, 1))


def test_time_gate_starts_from_the_channel_mean() -> None:
    gate = TimeGate(dim=3)
    torch.testing.assert_close(gate.down_channel.weight, torch.full((1, 6), 1 / 6))


def test_ttp_loads_a_sam_release_file_and_resizes_positions(tmp_path: Path) -> None:
    # A SAM-format checkpoint for the native 1024 px: image-encoder keys with SAM's names,
    # plus the prompt and mask parts, which are dropped.
    source = timm.create_model("samvit_large_patch16", num_classes=0, **SAM_SMALL)
    release = {
        f"image_encoder.{key.replace('mlp.fc', 'mlp.lin')}": value
        for key, value in source.state_dict().items()
    }
    release["mask_decoder.iou_token.weight"] = torch.zeros(1, 4)
    path = tmp_path / "sam_vit_l_0b3195.pth"
    torch.save(release, path)
    model = create_model("ttp_sam_l", backbone_weights=str(path), **TTP_SMALL)
    own, src = model.encoder.state_dict(), source.state_dict()
    torch.testing.assert_close(own["patch_embed.proj.weight"], src["patch_embed.proj.weight"])
    torch.testing.assert_close(
        own["blocks.0.block.attn.qkv.base.weight"], src["blocks.0.attn.qkv.weight"]
    )
    torch.testing.assert_close(own["blocks.0.block.attn.rel_pos_h"], src["blocks.0.attn.rel_pos_h"])
    grid = TTP_SMALL["img_size"] // 16
    expected_pos = F.interpolate(
        src["pos_embed"].permute(0, 3, 1, 2), size=(grid, grid), mode="bicubic"
    ).permute(0, 2, 3, 1)
    torch.testing.assert_close(own["pos_embed"], expected_pos)
    # The global-attention block's relative table shrinks from 2 * 64 - 1 to 2 * grid - 1.
    assert own["blocks.1.block.attn.rel_pos_w"].shape[0] == 2 * grid - 1


@pytest.mark.parametrize("name", ["ban_vit_b", "ttp_sam_l"])
def test_grad_checkpointing_gives_the_same_gradients(name: str) -> None:
    overrides = get_entry(name).info.test_overrides
    grads = []
    for enabled in (False, True):
        torch.manual_seed(0)
        model = create_model(name, grad_checkpointing=enabled, **overrides).train()
        part = model.branch if name.startswith("ban") else model.encoder
        assert part.grad_checkpointing == enabled
        torch.manual_seed(1)
        model(*image_pair(size=32)).square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for key, grad in grads[0].items():
        torch.testing.assert_close(grads[1][key], grad, msg=key)


@pytest.mark.parametrize("name", ["ban_vit_b_in21k", "ttp_sam_l"])
def test_runs_on_the_meta_device(name: str) -> None:
    assert count_gmacs(name, size=64, **get_entry(name).info.test_overrides) > 0


def test_ban_rejects_a_wrong_number_of_taps() -> None:
    with pytest.raises(ConfigError, match="encoder_taps must be 3 increasing block indices"):
        BAN("vit_base_patch16_224", 32, (1, 2), encoder_overrides=SMALL_VIT)
