"""ChangeMetrics against hand-computed confusion counts, degenerate cases and state merging."""

from __future__ import annotations

import math

import pytest
import torch

from cdkd.errors import ConfigError
from cdkd.metrics import METRIC_KEYS, ChangeMetrics, confusion_counts, scores_from_counts


def pair(tp: int, fp: int, fn: int, tn: int, ignored: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A one-row image ``[1, N]`` with the given confusion counts (plus ignored pixels)."""
    pred = [1] * tp + [1] * fp + [0] * fn + [0] * tn + [1, 0] * ignored
    gt = [1] * tp + [0] * fp + [1] * fn + [0] * tn + [255, 255] * ignored
    return torch.tensor([pred], dtype=torch.bool), torch.tensor([gt], dtype=torch.int64)


def f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r)


def expected(tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    """The paper's formulas for a non-degenerate image, written out by hand."""
    iou_c, acc_c, prec_c = tp / (tp + fp + fn), tp / (tp + fn), tp / (tp + fp)
    iou_u, acc_u, prec_u = tn / (tn + fp + fn), tn / (tn + fp), tn / (tn + fn)
    out = {
        "IoU_unchanged": iou_u,
        "IoU_changed": iou_c,
        "Acc_unchanged": acc_u,
        "Acc_changed": acc_c,
        "Precision_unchanged": prec_u,
        "Precision_changed": prec_c,
        "Fscore_unchanged": f1(prec_u, acc_u),
        "Fscore_changed": f1(prec_c, acc_c),
    }
    for name in ("IoU", "Acc", "Precision", "Fscore"):
        out[f"m{name}"] = (out[f"{name}_unchanged"] + out[f"{name}_changed"]) / 2
    return out


def scores_of(*images: tuple[torch.Tensor, torch.Tensor], policy: str = "one") -> ChangeMetrics:
    metric = ChangeMetrics(empty_policy=policy)
    for pred, gt in images:
        metric.update(pred, gt)
    return metric


def assert_close(actual: dict[str, float], wanted: dict[str, float]) -> None:
    assert set(actual) == set(METRIC_KEYS)
    for key in METRIC_KEYS:
        assert actual[key] == pytest.approx(wanted[key], abs=1e-12), key


def test_known_counts_match_formulas() -> None:
    metric = scores_of(pair(tp=3, fp=2, fn=1, tn=10))
    assert metric.per_image_counts().tolist() == [[3, 2, 1, 10]]
    result = metric.compute()
    assert result["count"] == 1
    assert_close(result["per_image"], expected(3, 2, 1, 10))
    assert_close(result["pooled"], expected(3, 2, 1, 10))
    assert result["per_image"]["IoU_changed"] == pytest.approx(0.5)
    assert all(isinstance(v, float) for v in result["per_image"].values())
    row = metric.per_image_scores()
    assert row.shape == (1, 12)
    assert row[0].tolist() == pytest.approx([expected(3, 2, 1, 10)[k] for k in METRIC_KEYS])


@pytest.mark.parametrize(("policy", "value"), [("one", 1.0), ("zero", 0.0)])
def test_empty_gt_and_empty_prediction(policy: str, value: float) -> None:
    result = scores_of(pair(tp=0, fp=0, fn=0, tn=16), policy=policy).compute()["per_image"]
    for name in ("IoU", "Acc", "Precision", "Fscore"):
        assert result[f"{name}_changed"] == value
        assert result[f"{name}_unchanged"] == 1.0
        assert result[f"m{name}"] == (1.0 + value) / 2


def test_skip_leaves_the_absent_class_out() -> None:
    empty, other = pair(tp=0, fp=0, fn=0, tn=16), pair(tp=3, fp=2, fn=1, tn=10)
    metric = scores_of(empty, other, policy="skip")
    rows = metric.per_image_scores()
    changed_cols = [i for i, k in enumerate(METRIC_KEYS) if k.endswith("_changed")]
    assert torch.isnan(rows[0, changed_cols]).all()
    assert rows[0, :4].tolist() == [1.0, 1.0, 1.0, 1.0]
    result = metric.compute()["per_image"]
    ref = expected(3, 2, 1, 10)
    assert result["IoU_changed"] == pytest.approx(ref["IoU_changed"])
    assert result["IoU_unchanged"] == pytest.approx((1.0 + ref["IoU_unchanged"]) / 2)
    assert result["mIoU"] == pytest.approx((1.0 + ref["mIoU"]) / 2)


@pytest.mark.parametrize("policy", ["one", "zero", "skip"])
def test_false_positives_on_empty_gt_score_zero_change(policy: str) -> None:
    result = scores_of(pair(tp=0, fp=3, fn=0, tn=13), policy=policy).compute()["per_image"]
    for name in ("IoU", "Acc", "Precision", "Fscore"):
        assert result[f"{name}_changed"] == 0.0
    assert result["IoU_unchanged"] == pytest.approx(13 / 16)
    assert result["Acc_unchanged"] == pytest.approx(13 / 16)
    assert result["Precision_unchanged"] == 1.0
    assert result["Fscore_unchanged"] == pytest.approx(f1(1.0, 13 / 16))
    assert result["mIoU"] == pytest.approx(13 / 32)


@pytest.mark.parametrize("policy", ["one", "zero", "skip"])
def test_missed_full_change_scores_zero(policy: str) -> None:
    result = scores_of(pair(tp=0, fp=0, fn=16, tn=0), policy=policy).compute()
    assert set(result["per_image"].values()) == {0.0}
    assert set(result["pooled"].values()) == {0.0}


def test_all_ignored_image() -> None:
    ignored = pair(tp=0, fp=0, fn=0, tn=0, ignored=8)
    assert set(scores_of(ignored, policy="one").compute()["per_image"].values()) == {1.0}
    assert set(scores_of(ignored, policy="zero").compute()["per_image"].values()) == {0.0}
    skipped = scores_of(ignored, policy="skip")
    assert torch.isnan(skipped.per_image_scores()).all()
    other = pair(tp=3, fp=2, fn=1, tn=10)
    with_ignored = scores_of(ignored, other, policy="skip").compute()
    assert with_ignored["count"] == 2
    assert_close(with_ignored["per_image"], expected(3, 2, 1, 10))
    assert_close(with_ignored["pooled"], expected(3, 2, 1, 10))


def test_ignore_pixels_count_nowhere() -> None:
    pred, gt = pair(tp=3, fp=2, fn=1, tn=10, ignored=5)
    assert confusion_counts(pred, gt).tolist() == [[3, 2, 1, 10]]
    assert_close(scores_of((pred, gt)).compute()["per_image"], expected(3, 2, 1, 10))


def test_per_image_and_pooled_differ() -> None:
    # Image A: tp=1, tn=3, perfect -> mIoU 1. Image B: fn=2, tn=2 -> IoU_c 0, IoU_u 2/4.
    metric = scores_of(pair(tp=1, fp=0, fn=0, tn=3), pair(tp=0, fp=0, fn=2, tn=2))
    result = metric.compute()
    assert result["per_image"]["mIoU"] == pytest.approx((1.0 + (0.0 + 0.5) / 2) / 2)
    # Pooled counts: tp=1, fp=0, fn=2, tn=5.
    assert result["pooled"]["mIoU"] == pytest.approx((1 / 3 + 5 / 7) / 2)
    assert result["pooled"]["Acc_changed"] == pytest.approx(1 / 3)
    assert result["per_image"]["Acc_changed"] == pytest.approx(0.5)


def random_batch(seed: int, n: int = 5, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ratios = torch.linspace(0.0, 0.6, n).view(n, 1, 1)
    gt = (torch.rand(n, size, size, generator=gen) < ratios).long()
    gt[torch.rand(n, size, size, generator=gen) < 0.05] = 255
    pred = torch.rand(n, size, size, generator=gen) < ratios
    return pred, gt


def test_batch_update_equals_single_updates() -> None:
    pred, gt = random_batch(0)
    batched = scores_of((pred, gt))
    single = scores_of(*((pred[i], gt[i]) for i in range(len(pred))))
    assert batched.compute() == single.compute()
    assert torch.equal(batched.per_image_scores(), single.per_image_scores())
    assert batched.per_image_scores().shape == (5, 12)


def test_int_predictions_equal_bool_predictions() -> None:
    pred, gt = random_batch(1)
    assert scores_of((pred.long(), gt)).compute() == scores_of((pred, gt)).compute()


def test_merge_state_equals_one_metric_on_all_data() -> None:
    (p1, g1), (p2, g2) = random_batch(2), random_batch(3)
    rank0, rank1 = scores_of((p1, g1)), scores_of((p2, g2))
    rank0.merge_state(rank1)
    whole = scores_of((torch.cat([p1, p2]), torch.cat([g1, g2])))
    merged, reference = rank0.compute(), whole.compute()
    assert merged["count"] == reference["count"] == 10
    for field in ("per_image", "pooled"):
        for key in METRIC_KEYS:
            assert merged[field][key] == pytest.approx(reference[field][key], abs=1e-12)


def test_distributed_sync_gathers_every_image() -> None:
    (p1, g1), (p2, g2) = random_batch(4), random_batch(5)
    other_rank = confusion_counts(p2, g2)

    def gather(tensor: torch.Tensor, group: object = None) -> list[torch.Tensor]:
        return [tensor, other_rank.to(tensor)]

    metric = ChangeMetrics(dist_sync_fn=gather, distributed_available_fn=lambda: True)
    metric.update(p1, g1)
    whole = scores_of((torch.cat([p1, p2]), torch.cat([g1, g2])))
    assert metric.compute() == whole.compute()
    assert metric.per_image_counts().shape == (10, 4)
    metric.update(p1, g1)
    assert metric.per_image_counts().shape == (15, 4)


def test_update_needs_no_data_on_host() -> None:
    # Meta tensors have no values, so any .item() or data-dependent branch would fail.
    pred = torch.zeros(2, 8, 8, dtype=torch.bool, device="meta")
    gt = torch.zeros(2, 8, 8, dtype=torch.int64, device="meta")
    assert confusion_counts(pred, gt).shape == (2, 4)


def test_scores_from_counts_pooled_rule_matches_per_image_rule() -> None:
    counts = torch.tensor([[0, 0, 0, 9], [0, 0, 0, 7]])
    assert scores_from_counts(counts.sum(0, keepdim=True), "one")[0, 0] == 1.0
    assert scores_from_counts(counts.sum(0, keepdim=True), "zero")[0, 0] == 0.5
    assert math.isnan(float(scores_from_counts(counts, "skip")[0, 5]))


def test_bad_inputs() -> None:
    with pytest.raises(ConfigError, match="empty_policy"):
        ChangeMetrics(empty_policy="nan")
    with pytest.raises(ValueError, match="shape"):
        ChangeMetrics().update(torch.zeros(2, 4, 4), torch.zeros(2, 4, 5))
