"""Lambda sweeps: one row per student run, and the choice of lambda on validation.

The pipeline's selection (:func:`select_lambda`) and the sweep report (:func:`best_run`) use
one rule: the highest validation per-image mIoU wins, ties go to the smaller lambda; the
test split is never read.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from rich.table import Table

from cdkd.analysis.tables import percent
from cdkd.errors import ConfigError, DataError
from cdkd.metrics.change import MEAN_KEYS
from cdkd.runs.layout import DEFAULT_SEED, RunFolder

SELECTION_RULE = "highest validation per-image mIoU; ties go to the smaller lambda"


def collect_sweep(sweep_dir: str | Path, seed: int = DEFAULT_SEED) -> list[dict[str, Any]]:
    """Rows ``{lambda, run, val: {...}, test: {...}}`` of every run of ``seed``, by lambda.

    A run is a sub-folder holding the config and metrics files a training run writes
    (:class:`RunFolder`); unfinished runs (no metrics yet) are listed with empty metrics.
    Runs of other seeds (``lambda_<lambda>-seed<N>/``, by the seed their config records) are
    left out, so each lambda is one row of one seed.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise DataError(f"{sweep_dir}: sweep folder not found")
    rows = []
    other_seeds: set[str] = set()
    runs = [RunFolder(path) for path in sorted(sweep_dir.iterdir()) if path.is_dir()]
    for run in (run for run in runs if run.config.is_file()):
        cfg = OmegaConf.load(run.config)
        run_seed = OmegaConf.select(cfg, "seed", default=DEFAULT_SEED)
        if str(run_seed) != str(seed):
            other_seeds.add(str(run_seed))
            continue
        metrics_file = run.metrics
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        rows.append(
            {
                "lambda": float(cfg.distill["lambda"]),
                "run": str(run.path),
                "val": metrics.get("val", {}).get("per_image", {}),
                "test": metrics.get("test", {}).get("per_image", {}),
            }
        )
    if not rows:
        found = (
            f" (runs of seed {', '.join(sorted(other_seeds))}: give seed=N)" if other_seeds else ""
        )
        raise DataError(
            f"{sweep_dir}: no runs of seed {seed} (sub-folders with a run's config) found{found}"
        )
    return sorted(rows, key=lambda r: r["lambda"])


def best_run(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The finished run with the highest validation mIoU (never selected on test).

    ``rows`` are in increasing lambda and ``max`` keeps the first maximum, so a tie goes to
    the smaller lambda.
    """
    finished = [r for r in rows if not math.isnan(r["val"].get("mIoU", math.nan))]
    return max(finished, key=lambda r: r["val"]["mIoU"]) if finished else None


def validation_metrics(run_dir: str | Path) -> dict[str, float]:
    """The validation per-image metrics a finished run recorded in its metrics file."""
    metrics_file = RunFolder(Path(run_dir)).metrics
    if not metrics_file.is_file():
        raise DataError(f"{metrics_file}: not found; the run has not finished")
    try:
        return dict(json.loads(metrics_file.read_text())["val"]["per_image"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{metrics_file}: no validation per-image metrics") from exc


def select_lambda(runs: dict[float, Path]) -> dict[str, Any]:
    """Choose lambda among the student runs of a grid by validation per-image mIoU.

    Every run of the grid must have finished (a missing one is an error naming its file:
    choosing among part of the grid would change the search silently). Returns the record
    written to the run layout's selection file: the rule, the grid, each lambda's run folder and
    validation metrics, and the chosen lambda with its run folder.
    """
    if not runs:
        raise ConfigError("distill.lambdas is empty: give at least one lambda")
    rows = [
        {"lambda": lam, "run": str(run), "val": validation_metrics(run)}
        for lam, run in sorted(runs.items())
    ]
    best = best_run(rows)
    if best is None:
        raise DataError(f"{rows[0]['run']}: no student has a validation mIoU")
    return {
        "rule": SELECTION_RULE,
        "grid": [row["lambda"] for row in rows],
        "runs": rows,
        "selected": {"lambda": best["lambda"], "run": best["run"]},
    }


def selected_lambda(path: str | Path) -> float:
    """The lambda recorded in a selection file; one line if there is none or it is bad."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"{path}: no lambda selection; run `python -m cdkd.pipeline` (it selects lambda "
            "on validation) or give distill.lambda=VALUE"
        )
    try:
        return float(json.loads(path.read_text())["selected"]["lambda"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a lambda selection (no selected.lambda)") from exc


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


def _selection_cells(selection: dict[str, Any], baseline_val: dict[str, float]) -> list[list[str]]:
    """Rows M_O, then the student at each lambda of the grid (the chosen one marked ``*``)."""
    cells = [["M_O", "-", *(percent(baseline_val.get(k, math.nan)) for k in MEAN_KEYS), ""]]
    chosen = selection["selected"]["lambda"]
    for run in selection["runs"]:
        metrics = (percent(run["val"].get(k, math.nan)) for k in MEAN_KEYS)
        cells.append(
            ["M_S", f"{run['lambda']:g}", *metrics, "*" if run["lambda"] == chosen else ""]
        )
    return cells


def selection_table(selection: dict[str, Any], baseline_val: dict[str, float], title: str) -> Table:
    """Validation m-metrics of M_O and of the student at each lambda, the selected one marked."""
    table = Table(title=title, caption=f"* selected: {selection['rule']}")
    for name in ("Model", "lambda"):
        table.add_column(name)
    for key in MEAN_KEYS:
        table.add_column(key, justify="right")
    table.add_column("selected")
    for cells in _selection_cells(selection, baseline_val):
        table.add_row(*cells)
    return table


def selection_markdown(
    selection: dict[str, Any], baseline_val: dict[str, float], title: str
) -> str:
    """The same table as :func:`selection_table`, as Markdown under a bold title line."""
    header = ["Model", "lambda", *MEAN_KEYS, "selected"]
    lines = [f"**{title}**", "", "| " + " | ".join(header) + " |"]
    lines.append("|:---|---:|" + "---:|" * len(MEAN_KEYS) + ":---:|")
    lines += [
        "| " + " | ".join(cells) + " |" for cells in _selection_cells(selection, baseline_val)
    ]
    lines += ["", f"\\* selected: {selection['rule']}."]
    return "\n".join(lines) + "\n"
