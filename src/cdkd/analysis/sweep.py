"""Summaries of lambda sweeps: one row per student run, the best by validation marked."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from rich.table import Table

from cdkd.analysis.tables import percent
from cdkd.errors import DataError
from cdkd.metrics.change import MEAN_KEYS


def collect_sweep(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Rows ``{lambda, run, val: {...}, test: {...}}`` of every finished run, by lambda.

    A run is a sub-folder holding the ``config.yaml`` and ``metrics.json`` a training run
    writes; unfinished runs (no ``metrics.json``) are listed with empty metrics.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise DataError(f"{sweep_dir}: sweep folder not found")
    rows = []
    for config in sorted(sweep_dir.glob("*/config.yaml")):
        run = config.parent
        cfg = OmegaConf.load(config)
        metrics_file = run / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        rows.append(
            {
                "lambda": float(cfg.distill["lambda"]),
                "run": str(run),
                "val": metrics.get("val", {}).get("per_image", {}),
                "test": metrics.get("test", {}).get("per_image", {}),
            }
        )
    if not rows:
        raise DataError(f"{sweep_dir}: no runs (sub-folders with config.yaml) found")
    return sorted(rows, key=lambda r: r["lambda"])


def best_run(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The finished run with the highest validation mIoU (never selected on test)."""
    finished = [r for r in rows if not math.isnan(r["val"].get("mIoU", math.nan))]
    return max(finished, key=lambda r: r["val"]["mIoU"]) if finished else None


def sweep_table(rows: list[dict[str, Any]], title: str) -> Table:
    """Lambda against the validation m-metrics (and test mIoU), best marked with ``*``."""
    best = best_run(rows)
    table = Table(title=title)
    table.add_column("lambda", justify="right")
    for key in MEAN_KEYS:
        table.add_column(f"val {key}", justify="right")
    table.add_column("test mIoU", justify="right")
    table.add_column("best")
    for row in rows:
        cells = [percent(row["val"].get(k, math.nan)) for k in MEAN_KEYS]
        test = percent(row["test"].get("mIoU", math.nan))
        table.add_row(f"{row['lambda']:g}", *cells, test, "*" if row is best else "")
    return table


def sweep_markdown(rows: list[dict[str, Any]], title: str) -> str:
    """The sweep table as Markdown."""
    best = best_run(rows)
    header = ["lambda", *(f"val {k}" for k in MEAN_KEYS), "test mIoU", "best"]
    lines = [f"**{title}**", "", "| " + " | ".join(header) + " |"]
    lines.append("|" + "---:|" * (len(header) - 1) + ":---:|")
    for row in rows:
        cells = [f"{row['lambda']:g}", *(percent(row["val"].get(k, math.nan)) for k in MEAN_KEYS)]
        cells += [percent(row["test"].get("mIoU", math.nan)), "*" if row is best else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
