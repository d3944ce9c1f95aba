"""Scores of a folder of predicted change masks against ground-truth masks of the same names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cdkd.data.io import IMAGE_SUFFIXES, check_same_size, read_mask
from cdkd.data.layout import list_images
from cdkd.errors import DataError
from cdkd.files import natural_key
from cdkd.metrics.change import ChangeMetrics, EmptyPolicy, check_empty_policy

_SHOWN = 5


def _mask_files(folder: Path, role: str) -> dict[str, Path]:
    """Mask files of ``folder`` keyed by file stem (any other file there is an error)."""
    if not folder.is_dir():
        raise DataError(f"{folder}: {role} folder not found")
    files = list_images(folder)
    if not files:
        raise DataError(f"{folder}: no {role} masks ({', '.join(IMAGE_SUFFIXES)})")
    return dict(sorted(files.items(), key=lambda item: natural_key(item[1].name)))


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _SHOWN else "")


def _pair_files(pred_dir: Path, gt_dir: Path) -> list[tuple[Path, Path]]:
    """Match predictions to ground-truth masks by file stem; any unmatched file is an error."""
    preds = _mask_files(pred_dir, "prediction")
    gts = _mask_files(gt_dir, "ground-truth")
    no_pred = [gts[stem].name for stem in gts if stem not in preds]
    no_gt = [preds[stem].name for stem in preds if stem not in gts]
    problems = []
    if no_pred:
        problems.append(
            f"{len(no_pred)} ground-truth mask(s) in {gt_dir} have no prediction in {pred_dir}: "
            + _listing(no_pred)
        )
    if no_gt:
        problems.append(
            f"{len(no_gt)} prediction(s) in {pred_dir} have no ground truth in {gt_dir}: "
            + _listing(no_gt)
        )
    if problems:
        raise DataError("; ".join(problems))
    return [(preds[stem], gts[stem]) for stem in gts]


def score_folders(
    pred_dir: str | Path,
    gt_dir: str | Path,
    empty_policy: EmptyPolicy = "one",
    label_threshold: int | None = None,
) -> dict[str, Any]:
    """Score 0/255 (or 0/1) prediction masks against ground-truth masks of the same names.

    Files are matched by name without suffix, so ``x.png`` scores against ``x.tif``. Ground
    truth is read as in training: strictly, or binarised at ``label_threshold``.

    Returns:
        ``{"count": N, "empty_policy": ..., "per_image": {...}, "pooled": {...}}`` with the
        metrics of :class:`cdkd.metrics.ChangeMetrics` as fractions.

    Raises:
        DataError: a missing folder, unmatched files, unreadable masks or differing sizes.
    """
    check_empty_policy(empty_policy)
    metric = ChangeMetrics(empty_policy=empty_policy)
    for pred_path, gt_path in _pair_files(Path(pred_dir), Path(gt_dir)):
        pred = read_mask(pred_path)
        gt = read_mask(gt_path, label_threshold)
        check_same_size(pred_path, pred, gt_path, gt)
        metric.update(torch.from_numpy(pred), torch.from_numpy(gt))
    scores = metric.compute()
    return {
        "count": scores["count"],
        "empty_policy": empty_policy,
        "per_image": scores["per_image"],
        "pooled": scores["pooled"],
    }
