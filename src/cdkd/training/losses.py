"""Task losses on head logits, computed at the label's resolution; ignore pixels get no loss.

- ``ce``: 2-channel cross-entropy (the paper's equation (5) written for two logits).
- ``ce_ohem``: cross-entropy on the hardest pixels (mmseg's OHEM sampler; Changer, LightCDNet).
- ``bce``: 1-channel BCE-with-logits.
- ``bce_dice``: BCE-with-logits plus a Dice term (ChangeStar-FarSeg): ``dice=mmseg`` (default)
  is what mmseg 1.2.2's ``DiceLoss`` computes for the official 1-channel head,
  ``dice=binary`` the soft Dice of the changed class over the valid pixels.
- ``bcl``: batch-balanced contrastive loss on a 1-channel distance map (STANet).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from cdkd.ops import resize_logits
from cdkd.partition import IGNORE_INDEX

#: The loss kinds (see the module table).
LossKind = Literal["ce", "ce_ohem", "bce", "bce_dice", "bcl"]
#: Loss name -> number of logit channels it expects.
LOSSES: dict[LossKind, int] = {"ce": 2, "ce_ohem": 2, "bce": 1, "bce_dice": 1, "bcl": 1}
#: Dice terms of ``bce_dice``.
DiceKind = Literal["mmseg", "binary"]
DICE_KINDS: tuple[DiceKind, ...] = get_args(DiceKind)
#: What the per-pixel losses of ``ce``/``bce``/``bce_dice`` are averaged over: ``all`` label
#: pixels, ignore pixels included with zero loss (mmseg's default ``avg_non_ignore=False``, the
#: official code's), or only the ``valid`` ones.
Average = Literal["all", "valid"]
AVERAGES: tuple[Average, ...] = get_args(Average)


class TaskLoss(nn.Module):
    """The supervised loss of a change model (see the module table for the kinds).

    Every kind first resizes the logits to the label size. Ignore pixels get no loss; ``ce``,
    ``bce`` and ``bce_dice``'s BCE divide the summed loss by the batch's label pixels
    (``average``), ``ce_ohem`` always by all of them, as mmseg does.

    Args:
        kind: a name of :data:`LOSSES`.
        ignore_index: label value that carries no supervision.
        ohem_thresh: ``ce_ohem`` keeps pixels whose probability of the true class is below this
            (or below the ``ohem_min_kept``-th smallest probability, whichever is larger).
        ohem_min_kept: ``ce_ohem`` keeps at least this many pixels per batch.
        margin: ``bcl`` pushes changed pixels' distances beyond this margin.
        bcl_eps: ``bcl`` normaliser offset. Open-CD passes ``ignore_index`` (255) here by a
            positional slip, which the paper's STANet numbers were trained with; 1e-4 is the
            intended value.
        dice: ``bce_dice``'s Dice term: ``mmseg`` (:func:`mmseg_dice_loss`, the official
            code's) or ``binary`` (:func:`soft_dice_loss`).
        average: ``all`` (the official code's) or ``valid`` pixels, see :data:`AVERAGES`.
    """

    def __init__(
        self,
        kind: LossKind = "ce",
        ignore_index: int = IGNORE_INDEX,
        ohem_thresh: float = 0.7,
        ohem_min_kept: int = 100_000,
        margin: float = 2.0,
        bcl_eps: float = 1e-4,
        dice: DiceKind = "mmseg",
        average: Average = "all",
    ) -> None:
        super().__init__()
        if kind not in LOSSES:
            raise ValueError(f"unknown loss '{kind}': use one of {sorted(LOSSES)}")
        if dice not in DICE_KINDS:
            raise ValueError(f"unknown Dice term '{dice}': use one of {list(DICE_KINDS)}")
        if average not in AVERAGES:
            raise ValueError(f"unknown loss average '{average}': use one of {list(AVERAGES)}")
        self.kind = kind
        self.ignore_index = ignore_index
        self.ohem_thresh = ohem_thresh
        self.ohem_min_kept = ohem_min_kept
        self.margin = margin
        self.bcl_eps = bcl_eps
        self.dice = dice
        self.average = average

    @property
    def out_channels(self) -> int:
        """Number of logit channels this loss expects."""
        return LOSSES[self.kind]

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = resize_logits(logits, (mask.shape[-2], mask.shape[-1])).float()
        valid = mask != self.ignore_index
        if self.kind == "ce_ohem":
            return self._ohem(logits, mask, valid)
        if self.kind == "bcl":
            return self._bcl(logits[:, 0], (mask == 1).float(), valid)
        pixels = valid.sum().clamp_min(1) if self.average == "valid" else mask.numel()
        if self.kind == "ce":
            summed = F.cross_entropy(logits, mask, ignore_index=self.ignore_index, reduction="sum")
            return summed / pixels
        target = (mask == 1).float()
        per_pixel = F.binary_cross_entropy_with_logits(logits[:, 0], target, reduction="none")
        loss = (per_pixel * valid).sum() / pixels
        if self.kind == "bce_dice" and self.dice == "mmseg":
            loss = loss + mmseg_dice_loss(logits[:, 0], mask)
        elif self.kind == "bce_dice":
            loss = loss + soft_dice_loss(logits[:, 0], target, valid)
        return loss

    def _ohem(self, logits: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over the hard pixels, computed without leaving the device.

        As mmseg's OHEM sampler: a pixel is kept when the probability of its true class is
        below ``max(ohem_thresh, p_k)``, ``p_k`` being the k-th smallest such probability with
        ``k = ohem_min_kept * batch``; the kept losses are summed and divided by the number of
        label pixels, like mmseg's default mean reduction.
        """
        per_pixel = F.cross_entropy(logits, mask, ignore_index=self.ignore_index, reduction="none")
        prob = torch.exp(-per_pixel).masked_fill(~valid, float("inf")).flatten()
        k = min(self.ohem_min_kept * mask.shape[0], prob.numel() - 1)
        cutoff = prob.kthvalue(k + 1).values
        threshold = torch.clamp(cutoff, min=self.ohem_thresh)
        keep = (prob < threshold).view_as(per_pixel) & valid
        return (per_pixel * keep).sum() / per_pixel.numel()

    def _bcl(
        self, distance: torch.Tensor, changed: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        """Batch-balanced contrastive loss on a distance map (STANet)."""
        unchanged = (1.0 - changed) * valid
        changed = changed * valid
        pull = (unchanged * distance.pow(2)).sum() / (unchanged.sum() + self.bcl_eps)
        push = (changed * torch.clamp(self.margin - distance, min=0).pow(2)).sum()
        return pull + push / (changed.sum() + self.bcl_eps)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``1 - Dice`` of the changed class's sigmoid probabilities over the valid pixels of the
    batch, smoothed by 1 (``dice=binary``)."""
    prob = torch.sigmoid(logits) * valid
    target = target * valid
    inter = (prob * target).sum()
    return 1.0 - (2.0 * inter + 1.0) / (prob.sum() + target.sum() + 1.0)


def mmseg_dice_loss(logits: torch.Tensor, mask: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """The Dice term of mmseg 1.2.2's ``DiceLoss(use_sigmoid=True)`` on a 1-channel head.

    ``logits`` ``[B, H, W]``, ``mask`` ``[B, H, W]`` with 0/1/255. mmseg one-hot encodes the
    label with as many classes as the head has channels (one): the label is clamped to [0, 1],
    so ignore pixels become 1, and only the column of class 0 is kept. The sigmoid probability
    of *change* is therefore compared with the indicator of *unchanged* pixels, ignore pixels
    count as not unchanged (its ``ignore_index`` only drops a channel numbered 255), and the
    V-Net form is used per image, ``1 - 2 sum(p t) / (sum(p^2) + eps + sum(t^2) + eps)``,
    averaged over the batch. This is what the official ChangeStar-FarSeg trained with.
    """
    prob = torch.sigmoid(logits).flatten(1)
    target = (mask == 0).float().flatten(1)
    inter = (prob * target).sum(1)
    dice = 2 * inter / (prob.pow(2).sum(1) + eps + target.pow(2).sum(1) + eps)
    return (1 - dice).mean()


def build_loss(spec: str | Mapping[str, Any]) -> TaskLoss:
    """A :class:`TaskLoss` from a name or a ``{kind: ..., <option>: ...}`` mapping."""
    options: dict[str, Any] = {"kind": spec} if isinstance(spec, str) else dict(spec)
    return TaskLoss(**options)
