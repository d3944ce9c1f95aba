"""STANet-Base and BIT: exact sizes, output geometry, and STANet's distance-map prediction path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from cdkd.cli.common import config_dir
from cdkd.models import create_model
from cdkd.models.complexity import count_parameters
from cdkd.training.distill import align_logits
from cdkd.training.losses import build_loss
from tests.factories import image_pair

SIZE = 64


@pytest.mark.parametrize(("name", "params"), [("stanet_base", 12_764_256), ("bit_r18", 2_989_638)])
def test_exact_parameter_count(name: str, params: int) -> None:
    assert count_parameters(create_model(name)) == params


@pytest.mark.parametrize(
    ("name", "shape"), [("stanet_base", (1, 1, 16, 16)), ("bit_r18", (1, 2, 64, 64))]
)
def test_runs_on_the_meta_device(name: str, shape: tuple[int, ...]) -> None:
    model = create_model(name).eval().to("meta")
    x = torch.empty(1, 3, SIZE, SIZE, device="meta")
    assert model(x, x).shape == shape


def test_stanet_outputs_the_distance_between_the_date_embeddings() -> None:
    model = create_model("stanet_base").eval()
    x1, x2 = image_pair(size=SIZE)
    with torch.no_grad():
        distance = model(x1, x2)
        e1, e2 = model.embed(x1), model.embed(x2)
        same = model(x1, x1)
        swapped = model(x2, x1)
    assert distance.shape == (2, 1, SIZE // 4, SIZE // 4)
    assert e1.shape == (2, 256, SIZE // 4, SIZE // 4)
    expected = (e1 - e2).pow(2).sum(dim=1, keepdim=True).sqrt()
    torch.testing.assert_close(distance, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(swapped, distance, atol=1e-4, rtol=1e-4)
    # Identical dates are (up to pairwise_distance's 1e-6 offset) at distance 0: no change.
    assert same.max() < 1e-3
    assert not model.predict(same).any()


def test_stanet_predicts_change_where_the_distance_exceeds_one() -> None:
    model = create_model("stanet_base")
    distance = torch.tensor([[[[0.0, 0.5], [1.0, 1.5]]]])
    torch.testing.assert_close(
        model.change_logit(distance), torch.tensor([[[[-1.0, -0.5], [0.0, 0.5]]]])
    )
    assert model.predict(distance).tolist() == [[[False, False], [False, True]]]


def test_stanet_distance_meets_a_two_channel_teacher_as_a_change_logit() -> None:
    student, teacher = create_model("stanet_base"), create_model("bit_r18")
    distance = torch.tensor([[[[0.0, 2.0], [1.0, 3.5]]]])
    # Teacher logits (unchanged, changed) at twice the student's size, constant per 2x2 block.
    teacher_logits = torch.zeros(1, 2, 4, 4)
    teacher_logits[:, 1, :2, 2:] = 3.0
    teacher_logits[:, 0, 2:, :2] = 0.5
    s, t = align_logits(distance, teacher_logits, student, teacher)
    torch.testing.assert_close(s, torch.tensor([[[[-1.0, 1.0], [0.0, 2.5]]]]))
    torch.testing.assert_close(t, torch.tensor([[[[0.0, 3.0], [-0.5, 0.0]]]]))


def test_stanet_config_keeps_open_cds_bcl_normaliser() -> None:
    conf = OmegaConf.load(Path(config_dir()) / "model" / "stanet_base.yaml")
    loss = build_loss(OmegaConf.to_container(conf.loss))
    distance = torch.tensor([[[[0.5, 3.0], [1.0, 0.0]]]])
    mask = torch.tensor([[[0, 1], [1, 255]]])
    # One unchanged pixel pulled (0.5^2), changed pixels pushed to the margin 2: (2-1)^2 only;
    # each sum is divided by its pixel count plus Open-CD's eps of 255.
    expected = 0.25 / (1 + 255) + 1.0 / (2 + 255)
    assert loss(distance, mask).item() == pytest.approx(expected)


def test_bit_backbone_stops_at_stride_eight_without_dilation() -> None:
    model = create_model("bit_r18").eval()
    x1, _ = image_pair(size=SIZE)
    with torch.no_grad():
        (features,) = model.backbone(x1)
    assert features.shape == (2, 256, SIZE // 8, SIZE // 8)
    convs = [m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(conv.dilation == (1, 1) for conv in convs)


def test_bit_logits_are_full_size_and_treat_the_dates_alike() -> None:
    model = create_model("bit_r18").eval()
    x1, x2 = image_pair(1, SIZE)
    with torch.no_grad():
        logits = model(x1, x2)
        # Only the positional embedding tells the dates apart: without it, swapping them
        # leaves |f1 - f2|, and so the logits, unchanged.
        model.pos_embedding.zero_()
        unordered = model(x1, x2)
        swapped = model(x2, x1)
        same = model(x1, x1)
    assert logits.shape == (1, 2, SIZE, SIZE)
    torch.testing.assert_close(swapped, unordered, atol=1e-5, rtol=1e-5)
    # Then |f1 - f2| is zero for identical dates, leaving the classifier's bias everywhere.
    bias = model.classifier[1].bias.detach().view(1, 2, 1, 1).expand_as(same)
    torch.testing.assert_close(same, bias)


def test_bit_tokens_are_attention_weighted_means() -> None:
    model = create_model("bit_r18").eval()
    torch.manual_seed(0)
    features = torch.rand(3, 32, 8, 8)
    with torch.no_grad():
        tokens = model.tokens(features)
        constant = model.tokens(torch.full((1, 32, 8, 8), 0.7))
    assert tokens.shape == (3, 4, 32)
    # Softmax weights sum to one per token: each token lies within the features' range.
    low = features.flatten(2).min(-1).values.unsqueeze(1)
    high = features.flatten(2).max(-1).values.unsqueeze(1)
    assert ((tokens >= low - 1e-6) & (tokens <= high + 1e-6)).all()
    torch.testing.assert_close(constant, torch.full((1, 4, 32), 0.7))
