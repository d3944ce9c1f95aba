"""Binary change-detection metrics as reported in the paper: per-image averaged and pooled.

The paper (section V-C) scores every test image on its own and averages the per-image values,
whereas MMSeg-style toolboxes pool the confusion counts of the whole dataset first. Both are
computed from the same per-image confusion counts, so one pass over the data gives both.
"""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from cdkd.errors import ConfigError
from cdkd.partition import IGNORE_INDEX

CLASSES: tuple[str, ...] = ("unchanged", "changed")
MEAN_KEYS: tuple[str, ...] = ("mIoU", "mAcc", "mPrecision", "mFscore")
METRIC_KEYS: tuple[str, ...] = (
    *MEAN_KEYS,
    "IoU_unchanged",
    "IoU_changed",
    "Acc_unchanged",
    "Acc_changed",
    "Precision_unchanged",
    "Precision_changed",
    "Fscore_unchanged",
    "Fscore_changed",
)
#: How a class absent from both the ground truth and the prediction scores (see
#: :class:`ChangeMetrics`).
EmptyPolicy = Literal["one", "zero", "skip"]
EMPTY_POLICIES: tuple[EmptyPolicy, ...] = get_args(EmptyPolicy)
_EMPTY_SCORE: dict[EmptyPolicy, float] = {"one": 1.0, "zero": 0.0, "skip": math.nan}


def check_empty_policy(empty_policy: str) -> EmptyPolicy:
    """Return ``empty_policy`` if it is in :data:`EMPTY_POLICIES`; raise ``ConfigError`` if not."""
    if empty_policy not in EMPTY_POLICIES:
        raise ConfigError(
            f"empty_policy={empty_policy!r} is not one of {', '.join(EMPTY_POLICIES)}"
        )
    return empty_policy


def confusion_counts(preds: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Per-image ``(tp, fp, fn, tn)`` counts of the *changed* class, ignoring ``ignore_index``.

    Args:
        preds: bool or 0/1 integer change map, ``[B, H, W]`` or ``[H, W]``.
        target: integer labels in {0, 1, ignore_index}, same shape as ``preds``.
        ignore_index: target value whose pixels count nowhere.

    Returns:
        int64 tensor ``[B, 4]`` on the device of ``preds``.
    """
    if preds.shape != target.shape:
        raise ValueError(
            f"prediction shape {tuple(preds.shape)} differs from target shape {tuple(target.shape)}"
        )
    if preds.ndim == 2:
        preds, target = preds.unsqueeze(0), target.unsqueeze(0)
    if preds.ndim != 3:
        raise ValueError(f"expected [B, H, W] or [H, W] inputs, got shape {tuple(preds.shape)}")
    valid = (target != ignore_index).flatten(1)
    changed = (target == 1).flatten(1) & valid
    predicted = preds.bool().flatten(1) & valid
    tp = (predicted & changed).sum(1)
    fp = (predicted & ~changed).sum(1)
    fn = (~predicted & changed).sum(1)
    tn = valid.sum(1) - tp - fp - fn
    return torch.stack((tp, fp, fn, tn), dim=1).to(torch.int64)


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` for counts with ``0 <= num <= den``, giving 0 where ``den`` is 0."""
    return num / den.clamp(min=1)


def _class_scores(tp: Tensor, fp: Tensor, fn: Tensor) -> Tensor:
    """IoU, Acc (recall), Precision and Fscore of one class, any zero denominator giving 0.

    The F-score is written as ``2TP / (2TP + FP + FN)``, which equals ``2PR / (P + R)``
    wherever the latter is defined and is 0 wherever either factor is 0.
    """
    return torch.stack(
        (
            _ratio(tp, tp + fp + fn),
            _ratio(tp, tp + fn),
            _ratio(tp, tp + fp),
            _ratio(2 * tp, 2 * tp + fp + fn),
        ),
        dim=1,
    )


def scores_from_counts(counts: Tensor, empty_policy: EmptyPolicy = "one") -> Tensor:
    """The 12 metrics of :data:`METRIC_KEYS` for each row of ``(tp, fp, fn, tn)`` counts.

    The rule for degenerate cases lives here only (see :class:`ChangeMetrics`). Under
    ``"skip"`` a skipped class is NaN, and a mean over classes is the mean of the classes
    left (NaN when neither is left).

    Args:
        counts: ``[N, 4]`` confusion counts of the changed class, columns ``tp, fp, fn, tn``.
        empty_policy: ``"one"``, ``"zero"`` or ``"skip"``.

    Returns:
        float64 tensor ``[N, 12]``, columns in :data:`METRIC_KEYS` order.
    """
    fill = _EMPTY_SCORE[check_empty_policy(empty_policy)]
    c = counts.to(torch.float64)
    if c.ndim != 2 or c.shape[1] != 4:
        raise ValueError(f"expected counts of shape [N, 4], got {tuple(c.shape)}")
    tp, fp, fn, tn = c.unbind(1)
    # Unchanged is the positive class of the swapped problem: tn plays tp, fn plays fp.
    per_class = torch.stack((_class_scores(tn, fn, fp), _class_scores(tp, fp, fn)), dim=2)
    absent = torch.stack((tn + fn + fp == 0, tp + fp + fn == 0), dim=1)
    per_class = per_class.masked_fill(absent.unsqueeze(1), fill)
    means = per_class.nanmean(dim=2)
    return torch.cat((means, per_class.flatten(1)), dim=1)


def _as_dict(row: Tensor) -> dict[str, float]:
    return dict(zip(METRIC_KEYS, row.tolist(), strict=True))


def summarize_counts(counts: Tensor, empty_policy: EmptyPolicy = "one") -> dict[str, Any]:
    """Per-image averaged and pooled metrics from per-image ``(tp, fp, fn, tn)`` counts.

    Returns:
        ``{"count": N, "per_image": {...}, "pooled": {...}}``; each inner dict maps
        :data:`METRIC_KEYS` to Python floats. A figure with no contributing value (no
        images, or every one skipped) is NaN.
    """
    counts = counts.reshape(-1, 4)
    per_image = scores_from_counts(counts, empty_policy).cpu()
    pooled = scores_from_counts(counts.sum(0, keepdim=True), empty_policy).cpu()
    return {
        "count": int(counts.shape[0]),
        "per_image": _as_dict(per_image.nanmean(dim=0)),
        "pooled": _as_dict(pooled[0]),
    }


class ChangeMetrics(Metric):
    """IoU, Acc (recall), Precision and Fscore of both classes, per image and pooled.

    For each image the four metrics are computed for *unchanged* and *changed*; the image's
    mIoU / mAcc / mPrecision / mFscore are the means over the two classes, and the
    ``per_image`` figures are plain means over images (the paper's protocol). The ``pooled``
    figures apply the same formulas to the confusion counts summed over the dataset (MMSeg's
    protocol). Pixels whose target is ``ignore_index`` count nowhere.

    Degenerate cases, decided per image (and, for ``pooled``, on the summed counts):

    * A class absent from both the ground truth and the prediction (e.g. *changed* on an
      image with no change that was predicted unchanged, or both classes on an image whose
      pixels are all ignored) scores according to ``empty_policy``: ``"one"`` gives 1 on all
      four metrics (the rule of the official per-image evaluation code), ``"zero"`` gives 0,
      and ``"skip"`` leaves that class of that image out of the class's dataset mean, the
      image's m-metrics then being the mean of its remaining class (an image with no class
      left is left out of the m-metric means).
    * Any other zero denominator scores 0: change in the ground truth that is never
      predicted gives Precision_changed = 0, predicted change on an image without change
      gives Acc_changed = 0, and their IoU and Fscore are 0 as well.

    The state is one ``[B, 4]`` tensor of ``(tp, fp, fn, tn)`` per update, concatenated on
    synchronisation, so under DDP every image's counts are gathered (rows then come rank by
    rank). Targets are expected in {0, 1, ignore_index}; they are not checked in
    :meth:`update`, which would force a host synchronisation.

    Args:
        empty_policy: ``"one"`` (default), ``"zero"`` or ``"skip"``.
        ignore_index: target value to ignore.
        **kwargs: passed to :class:`torchmetrics.Metric`.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    counts: list[Tensor]

    def __init__(
        self, empty_policy: EmptyPolicy = "one", ignore_index: int = IGNORE_INDEX, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.empty_policy = check_empty_policy(empty_policy)
        self.ignore_index = ignore_index
        self.add_state("counts", default=[], dist_reduce_fx="cat")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add the confusion counts of a batch of change maps ``[B, H, W]`` (or one ``[H, W]``)."""
        self.counts.append(confusion_counts(preds, target, self.ignore_index))

    def sync(self, *args: Any, **kwargs: Any) -> None:
        """Gather the states of all ranks (see :meth:`torchmetrics.Metric.sync`).

        A rank that scored no image (e.g. an uneven, unpadded evaluation split) contributes an
        empty ``[0, 4]`` tensor, so that every rank takes part in the same collectives.
        """
        if isinstance(self.counts, list) and not self.counts:
            self.counts.append(torch.zeros(0, 4, dtype=torch.int64, device=self.device))
        super().sync(*args, **kwargs)

    def _all_counts(self) -> Tensor:
        if isinstance(self.counts, Tensor):
            return self.counts.reshape(-1, 4)
        if not self.counts:
            return torch.zeros(0, 4, dtype=torch.int64, device=self.device)
        return dim_zero_cat(self.counts)

    def compute(self) -> dict[str, Any]:
        """``{"count": N, "per_image": {...}, "pooled": {...}}`` with floats in [0, 1]."""
        return summarize_counts(self._all_counts(), self.empty_policy)

    def per_image_counts(self) -> Tensor:
        """The ``[N, 4]`` counts (``tp, fp, fn, tn``) of every image, rows in update order.

        Under DDP this gathers from all ranks, so every rank must call it.
        """
        should_sync = self.sync_on_compute and not self._is_synced
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=should_sync):
            return self._all_counts().clone()

    def per_image_scores(self) -> Tensor:
        """float64 ``[N, 12]`` per-image metrics, columns in :data:`METRIC_KEYS` order.

        Entries skipped under ``empty_policy="skip"`` are NaN. Gathers like
        :meth:`per_image_counts`.
        """
        return scores_from_counts(self.per_image_counts(), self.empty_policy)
