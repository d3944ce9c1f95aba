"""Evaluate a change model on a data split: metrics.json, per-image CSV, optional 0/255 PNGs."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.progress import track

from cdkd.data.io import write_mask
from cdkd.files import atomic_path, write_json_atomic
from cdkd.inference.origin_partition import OriginPartition
from cdkd.metrics import METRIC_KEYS, ChangeMetrics, EmptyPolicy
from cdkd.models import ChangeModel
from cdkd.ops import resize_logits
from cdkd.partition import change_area_ratio


def pick_device(name: str) -> torch.device:
    """``auto`` means CUDA when available; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_for(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA; a disabled context elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@dataclass
class Evaluation:
    """What one pass over a split produced, in dataset order."""

    names: list[str]
    cars: torch.Tensor
    metrics: ChangeMetrics

    def result(self) -> dict[str, Any]:
        """Metrics in the schema of ``cdkd.score``."""
        return {**self.metrics.compute(), "empty_policy": self.metrics.empty_policy}


@torch.inference_mode()
def run_evaluation(
    model: ChangeModel,
    batches: Iterable[Mapping[str, Any]],
    device: torch.device | str = "cpu",
    empty_policy: EmptyPolicy = "one",
    predictions_dir: str | Path | None = None,
    total: int | None = None,
) -> Evaluation:
    """Predict every batch, accumulate the metrics, optionally write 0/255 prediction PNGs.

    Nothing in the loop waits for the device (metrics and CARs stay on it until the end)
    except the copy of the predictions when they are saved.
    """
    device = torch.device(device)
    model = model.to(device).eval()
    # One process scores the whole split: never gather from other ranks, even under DDP.
    metrics = ChangeMetrics(empty_policy=empty_policy, sync_on_compute=False).to(device)
    names: list[str] = []
    cars: list[torch.Tensor] = []
    for batch in track(batches, description="evaluating", total=total, transient=True):
        x1 = batch["image1"].to(device, non_blocking=True)
        x2 = batch["image2"].to(device, non_blocking=True)
        mask = batch["mask"].to(device, non_blocking=True)
        sizes = batch.get("size")
        with autocast_for(device):
            if isinstance(model, OriginPartition) and sizes is not None:
                logits = model(x1, x2, sizes=sizes)  # routing counts only each image's pixels
            else:
                logits = model(x1, x2)
        pred = model.predict(resize_logits(logits.float(), tuple(mask.shape[-2:])))
        metrics.update(pred, mask)
        names.extend(batch["name"])
        cars.append(change_area_ratio(mask))
        if predictions_dir is not None:
            # The only host copy of the loop: one per batch, and only when saving.
            host = pred.cpu().numpy()
            for i, name in enumerate(batch["name"]):
                h, w = (int(v) for v in sizes[i]) if sizes is not None else host.shape[-2:]
                write_mask(Path(predictions_dir) / f"{Path(name).stem}.png", host[i, :h, :w])
    if not names:
        raise ValueError("evaluation received no images")
    return Evaluation(names, torch.cat(cars).cpu(), metrics)


def write_evaluation(
    out_dir: str | Path,
    evaluation: Evaluation,
    extra: Mapping[str, Any] | None = None,
    columns: Mapping[str, Sequence[Any]] | None = None,
) -> dict[str, Any]:
    """Write ``metrics.json`` (score schema plus ``extra``) and ``per_image.csv``.

    The CSV has one row per image: name, ground-truth CAR, any extra ``columns`` (one value
    per image) and the twelve per-image metrics, as fractions.
    """
    out_dir = Path(out_dir)
    result = {**dict(extra or {}), **evaluation.result()}
    write_json_atomic(out_dir / "metrics.json", result)
    columns = dict(columns or {})
    scores = evaluation.metrics.per_image_scores().tolist()
    with atomic_path(out_dir / "per_image.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["name", "car", *columns, *METRIC_KEYS])
        for i, name in enumerate(evaluation.names):
            extras = [_cell(values[i]) for values in columns.values()]
            metrics = (f"{v:.6f}" for v in scores[i])
            writer.writerow([name, f"{evaluation.cars[i].item():.6f}", *extras, *metrics])
    return result


def _cell(value: Any) -> str:
    return f"{value:.6f}" if isinstance(value, float) else str(value)


def evaluate(
    model: ChangeModel,
    batches: Iterable[Mapping[str, Any]],
    out_dir: str | Path,
    device: torch.device | str = "cpu",
    empty_policy: EmptyPolicy = "one",
    save_predictions: bool = False,
    extra: Mapping[str, Any] | None = None,
    total: int | None = None,
) -> dict[str, Any]:
    """Score ``model`` on evaluation batches and write the results into ``out_dir``.

    Writes ``metrics.json``, ``per_image.csv`` and, with ``save_predictions``,
    ``predictions/NAME.png`` (0/255, cropped to the image size). Returns the metrics.
    """
    predictions = Path(out_dir) / "predictions" if save_predictions else None
    evaluation = run_evaluation(model, batches, device, empty_policy, predictions, total)
    return write_evaluation(out_dir, evaluation, extra)
