"""Evaluate a change model on a data split: metrics.json, per-image CSV, optional 0/255 PNGs."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from rich.progress import track

from cdkd.data.io import write_mask
from cdkd.files import atomic_path, write_json_atomic
from cdkd.metrics import METRIC_KEYS, ChangeMetrics
from cdkd.models import ChangeModel
from cdkd.partition import change_area_ratio
from cdkd.training.losses import resize_logits


def autocast_for(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA; a disabled context elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.inference_mode()
def evaluate(
    model: ChangeModel,
    batches: Iterable[Mapping[str, Any]],
    out_dir: str | Path,
    device: torch.device | str = "cpu",
    empty_policy: str = "one",
    save_predictions: bool = False,
    extra: Mapping[str, Any] | None = None,
    total: int | None = None,
) -> dict[str, Any]:
    """Score ``model`` on evaluation batches and write the results into ``out_dir``.

    Writes ``metrics.json`` (the schema of ``cdkd.score``, plus ``extra`` keys),
    ``per_image.csv`` (name, ground-truth CAR and the twelve per-image metrics) and, when
    ``save_predictions`` is set, ``predictions/NAME.png`` (0/255, cropped to the image size).
    Returns the metrics dictionary.
    """
    device = torch.device(device)
    out_dir = Path(out_dir)
    model = model.to(device).eval()
    metrics = ChangeMetrics(empty_policy=empty_policy).to(device)
    names: list[str] = []
    cars: list[torch.Tensor] = []
    for batch in track(batches, description="evaluating", total=total, transient=True):
        x1 = batch["image1"].to(device, non_blocking=True)
        x2 = batch["image2"].to(device, non_blocking=True)
        mask = batch["mask"].to(device, non_blocking=True)
        with autocast_for(device):
            logits = model(x1, x2)
        pred = model.predict(resize_logits(logits.float(), tuple(mask.shape[-2:])))
        metrics.update(pred, mask)
        names.extend(batch["name"])
        cars.append(change_area_ratio(mask))
        if save_predictions:
            sizes = batch.get("size")
            for i, name in enumerate(batch["name"]):
                h, w = (int(v) for v in sizes[i]) if sizes is not None else pred.shape[-2:]
                write_mask(
                    out_dir / "predictions" / f"{Path(name).stem}.png", pred[i, :h, :w].cpu()
                )
    if not names:
        raise ValueError("evaluation received no images")
    result: dict[str, Any] = {
        **dict(extra or {}),
        **metrics.compute(),
        "empty_policy": empty_policy,
    }
    write_json_atomic(out_dir / "metrics.json", result)
    write_per_image_csv(
        out_dir / "per_image.csv", names, torch.cat(cars), metrics.per_image_scores()
    )
    return result


def write_per_image_csv(
    path: str | Path, names: list[str], cars: torch.Tensor, scores: torch.Tensor
) -> None:
    """Write one row per image: name, CAR and the per-image metrics (fractions)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["name", "car", *METRIC_KEYS])
        for name, car, row in zip(names, cars.tolist(), scores.tolist(), strict=True):
            writer.writerow([name, f"{car:.6f}", *(f"{v:.6f}" for v in row)])
