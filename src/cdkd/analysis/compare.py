"""Comparisons of the strategies from what evaluation already wrote: tables of the paper.

Everything here reads the ``metrics.json`` and ``per_image.csv`` files of ``cdkd.eval`` (and
the ``results.json`` of ``cdkd.pipeline``) and never runs a model. Metric values stay
fractions in [0, 1] in memory and in CSV files; Markdown shows percentages as the paper does.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from cdkd.analysis.tables import csv_text, markdown_table, percent
from cdkd.errors import ConfigError, DataError
from cdkd.files import natural_key
from cdkd.metrics.change import CLASSES, MEAN_KEYS, METRIC_KEYS
from cdkd.partition import PartitionScheme
from cdkd.runs.layout import model_results

#: The evaluation strategies (``cdkd.eval strategy=``): the original model M_O, O-P inference
#: through the CAR-partition teachers, and the MTKD student.
Strategy = Literal["original", "op", "mtkd"]
STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)
#: Display name of each evaluation strategy, in the paper's order.
STRATEGY_LABELS: dict[Strategy, str] = {"original": "Original", "op": "O-P", "mtkd": "MTKD"}
#: The per-class metrics of the paper's Table IV.
CLASS_METRICS: tuple[str, ...] = ("IoU", "Acc", "Precision", "Fscore")


class MissingInput(DataError):
    """An evaluation output that has not been produced yet; the message says how to make it."""


@dataclass(frozen=True)
class PerImage:
    """The rows of one ``per_image.csv``: image names, ground-truth CAR and the metrics."""

    path: Path
    names: tuple[str, ...]
    cars: np.ndarray
    scores: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.names)

    def reordered(self, names: Sequence[str]) -> PerImage:
        """The same rows in the order of ``names`` (which must be exactly this file's names)."""
        position = {name: i for i, name in enumerate(self.names)}
        order = np.asarray([position[name] for name in names], dtype=np.int64)
        return PerImage(
            self.path,
            tuple(names),
            self.cars[order],
            {key: values[order] for key, values in self.scores.items()},
        )


def read_per_image(path: str | Path, hint: str = "") -> PerImage:
    """Parse a ``per_image.csv`` of ``cdkd.eval``.

    A missing file is :class:`MissingInput` (``hint`` appended, e.g. the command to run); a
    missing column, a value that is not a number, a repeated name or no rows is a DataError.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"{path}: not found" + (f"; {hint}" if hint else ""))
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in ("name", "car", *METRIC_KEYS) if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
        names: list[str] = []
        values: dict[str, list[float]] = {key: [] for key in ("car", *METRIC_KEYS)}
        for line, row in enumerate(reader, start=2):
            try:
                for key, column in values.items():
                    column.append(float(row[key]))
            except (TypeError, ValueError) as exc:
                raise DataError(f"{path}: line {line}: {exc}") from exc
            names.append(row["name"])
    if not names:
        raise DataError(f"{path}: no images")
    if len(set(names)) != len(names):
        repeated = next(name for name in names if names.count(name) > 1)
        raise DataError(f"{path}: image {repeated} appears more than once")
    arrays = {key: np.asarray(column, dtype=np.float64) for key, column in values.items()}
    cars = arrays.pop("car")
    return PerImage(path, tuple(names), cars, arrays)


def read_metrics(path: str | Path, hint: str = "") -> dict[str, Any]:
    """Parse a ``metrics.json`` of ``cdkd.eval``; it must hold a ``per_image`` mapping."""
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"{path}: not found" + (f"; {hint}" if hint else ""))
    return _json_with(path, "per_image", "no 'per_image' metrics")


def align(runs: Mapping[str, PerImage]) -> dict[str, PerImage]:
    """The runs in the image order of the first one, checking that all hold the same images."""
    if not runs:
        raise ConfigError("no strategies to compare")
    first = next(iter(runs.values()))
    reference = set(first.names)
    for run in runs.values():
        if set(run.names) != reference:
            odd = sorted(set(run.names) ^ reference, key=natural_key)[0]
            raise DataError(
                f"{run.path}: images differ from {first.path} (e.g. {odd} is in only one of them)"
            )
    return {key: run.reordered(first.names) for key, run in runs.items()}


@dataclass(frozen=True)
class CarGroup:
    """Images of one CAR range: positions in the aligned runs and the CAR bounds."""

    positions: np.ndarray
    lower: float
    upper: float

    def __len__(self) -> int:
        return len(self.positions)


def car_groups(names: Sequence[str], cars: np.ndarray, groups: int = 5) -> list[CarGroup]:
    """Sort images by ground-truth CAR and cut them into ``groups`` groups of equal count.

    When the count does not divide evenly the first groups get one image more. Equal CARs are
    ordered by name (natural order) so the grouping is deterministic.
    """
    count = len(names)
    if not 1 <= groups <= count:
        raise ConfigError(f"groups={groups}: needs between 1 and {count} (the number of images)")
    order = sorted(range(count), key=lambda i: (float(cars[i]), natural_key(names[i])))
    chunks = np.array_split(np.asarray(order, dtype=np.int64), groups)
    return [CarGroup(chunk, float(cars[chunk].min()), float(cars[chunk].max())) for chunk in chunks]


def car_range_rows(
    runs: Mapping[str, PerImage], groups: int = 5, metric: str = "mIoU"
) -> list[dict[str, Any]]:
    """The paper's Fig. 8 numbers: per CAR group its bounds and each strategy's mean ``metric``.

    Groups are formed on the ground-truth CAR of the first run; each row holds ``group``
    (1-based), ``count``, ``car_min``, ``car_max`` and one mean per strategy key of ``runs``.
    """
    if metric not in METRIC_KEYS:
        raise ConfigError(f"metric={metric}: use one of {', '.join(METRIC_KEYS)}")
    aligned = align(runs)
    first = next(iter(aligned.values()))
    rows = []
    for number, group in enumerate(car_groups(first.names, first.cars, groups), start=1):
        row: dict[str, Any] = {
            "group": number,
            "count": len(group),
            "car_min": group.lower,
            "car_max": group.upper,
        }
        for key, run in aligned.items():
            row[key] = _mean(run.scores[metric][group.positions])
        rows.append(row)
    return rows


def _mean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def car_range_markdown(
    rows: Sequence[Mapping[str, Any]], strategies: Sequence[str], title: str, metric: str = "mIoU"
) -> str:
    """:func:`car_range_rows` as Markdown: CAR bounds and per-strategy means in percent."""
    header = ["Group", "Images", "CAR range (%)", *(strategy_label(s) for s in strategies)]
    cells = [
        [
            str(row["group"]),
            str(row["count"]),
            f"{percent(row['car_min'])} – {percent(row['car_max'])}",
            *(percent(row[s]) for s in strategies),
        ]
        for row in rows
    ]
    note = f"{metric} in %; groups of equal image count, by ground-truth CAR"
    return markdown_table(header, cells, title, note, align=["right"] * len(header))


def car_range_csv(rows: Sequence[Mapping[str, Any]], strategies: Sequence[str]) -> str:
    """:func:`car_range_rows` as CSV text (fractions)."""
    keys = ["group", "count", "car_min", "car_max", *strategies]
    return csv_text(keys, [[row[key] for key in keys] for row in rows])


def class_differences(
    base: Mapping[str, float | None], other: Mapping[str, float | None]
) -> dict[str, dict[str, float]]:
    """The paper's Table IV: ``other - base`` per class and metric, in percentage points.

    Args:
        base: Per-image averaged metrics of the original model (``metrics.json["per_image"]``).
        other: The same for the compared strategy (MTKD in the paper).

    Returns:
        ``{class: {metric: points}}`` for the classes unchanged/changed and the metrics IoU,
        Acc, Precision, Fscore; a value missing on either side gives NaN.
    """
    return {
        cls: {
            name: 100.0 * (_value(other, f"{name}_{cls}") - _value(base, f"{name}_{cls}"))
            for name in CLASS_METRICS
        }
        for cls in CLASSES
    }


def _value(metrics: Mapping[str, float | None], key: str) -> float:
    value = metrics.get(key)
    return math.nan if value is None else float(value)


def signed(points: float) -> str:
    """A difference in points with its sign and two decimals (``+0.24``); NaN prints ``n/a``."""
    return "n/a" if math.isnan(points) else f"{points:+.2f}"


def class_markdown(
    differences: Mapping[str, Mapping[str, Mapping[str, float]]],
    title: str,
    absolute: Mapping[str, Mapping[str, float | None]] | None = None,
) -> str:
    """Table IV as Markdown: one block of two rows (unchanged, changed) per method.

    Args:
        differences: method -> :func:`class_differences` result.
        title: Bold line above the table.
        absolute: Optional strategy label -> per-image averaged metrics, shown in a second
            table with the per-class values themselves (in percent).
    """
    header = ["Method", "Class", *CLASS_METRICS]
    cells = []
    for method, diff in differences.items():
        for i, cls in enumerate(CLASSES):
            name = method if i == 0 else ""
            cells.append([name, cls, *(signed(diff[cls][m]) for m in CLASS_METRICS)])
    align = ["left", "left", *(["right"] * len(CLASS_METRICS))]
    note = "difference in percentage points, per-image averaged"
    text = markdown_table(header, cells, title, note, align=align)
    if absolute:
        header = ["Strategy", "Class", *CLASS_METRICS]
        cells = []
        for strategy, metrics in absolute.items():
            for i, cls in enumerate(CLASSES):
                values = (percent(_value(metrics, f"{m}_{cls}")) for m in CLASS_METRICS)
                cells.append([strategy if i == 0 else "", cls, *values])
        text += "\n" + markdown_table(
            header, cells, "Per-class values", "per-image averaged, %", align=align
        )
    return text


def class_csv(differences: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """Table IV as CSV text: method, class and the four differences in points."""
    return csv_text(
        ["method", "class", *CLASS_METRICS],
        [
            [method, cls, *(diff[cls][m] for m in CLASS_METRICS)]
            for method, diff in differences.items()
            for cls in CLASSES
        ],
    )


def top_images(runs: Mapping[str, PerImage], count: int, metric: str = "mIoU") -> list[str]:
    """The ``count`` images whose ``metric`` differs most between the strategies (max - min).

    Ties keep natural name order; with one strategy every spread is 0 and the first images in
    name order are returned.
    """
    aligned = align(runs)
    first = next(iter(aligned.values()))
    table = np.stack([run.scores[metric] for run in aligned.values()])
    spread = np.nan_to_num(np.nanmax(table, axis=0) - np.nanmin(table, axis=0), nan=0.0)
    order = sorted(range(len(first)), key=lambda i: (-spread[i], natural_key(first.names[i])))
    return [first.names[i] for i in order[: max(count, 0)]]


def car_distribution_rows(
    cars: Mapping[str, np.ndarray], scheme: PartitionScheme
) -> list[dict[str, Any]]:
    """Per split: image count, share of images per CAR bucket, share without change, median CAR."""
    rows = []
    for split, values in cars.items():
        values = np.asarray(values, dtype=np.float64)
        buckets = np.atleast_1d(scheme.bucket_of(values))
        row: dict[str, Any] = {"split": split, "count": int(values.size)}
        for index, bucket in enumerate(scheme.buckets):
            row[bucket] = int(np.count_nonzero(buckets == index))
        row["no_change"] = int(np.count_nonzero(values == 0))
        row["median_car"] = float(np.median(values)) if values.size else math.nan
        rows.append(row)
    return rows


def car_distribution_markdown(
    rows: Sequence[Mapping[str, Any]], scheme: PartitionScheme, title: str
) -> str:
    """:func:`car_distribution_rows` as Markdown: counts and shares of each CAR bucket."""
    bounds = _bucket_bounds(scheme)
    header = ["Split", "Images", *bounds, "CAR = 0", "median CAR (%)"]
    cells = []
    for row in rows:
        n = max(row["count"], 1)
        shares = [_count_share(row[b], n) for b in (*scheme.buckets, "no_change")]
        cells.append([row["split"], str(row["count"]), *shares, percent(row["median_car"])])
    align = ["left", *(["right"] * (len(header) - 1))]
    return markdown_table(
        header, cells, title, "images, share of the split in brackets", align=align
    )


def car_distribution_csv(rows: Sequence[Mapping[str, Any]], scheme: PartitionScheme) -> str:
    """:func:`car_distribution_rows` as CSV text (counts; median CAR as a fraction)."""
    keys = ["split", "count", *scheme.buckets, "no_change", "median_car"]
    return csv_text(keys, [[row[k] for k in keys] for row in rows])


def _bucket_bounds(scheme: PartitionScheme) -> list[str]:
    """Column titles such as ``small (CAR <= 5%)``, ``medium (5% < CAR <= 20%)``."""
    th = [f"{100 * t:g}%" for t in scheme.thresholds]
    titles = [f"{scheme.buckets[0]} (CAR <= {th[0]})"]
    titles += [f"{scheme.buckets[i]} ({th[i - 1]} < CAR <= {th[i]})" for i in range(1, len(th))]
    titles.append(f"{scheme.buckets[-1]} (CAR > {th[-1]})")
    return titles


def _count_share(count: int, total: int) -> str:
    return f"{count} ({100.0 * count / total:.1f}%)"


def collect_results(data_dir: str | Path, suffix: str = "") -> list[dict[str, Any]]:
    """The pipeline results of every model under ``data_dir`` (the run layout's), by model name."""
    files = sorted(model_results(data_dir, suffix), key=lambda p: natural_key(p.parent.name))
    if not files:
        raise MissingInput(
            f"{data_dir}: no model has pipeline results (partition suffix '{suffix}'); "
            "run `python -m cdkd.pipeline` for a model first"
        )
    results = []
    for path in files:
        content = _json_with(path, "rows", "no 'rows' (not a results file of cdkd.pipeline)")
        results.append({**content, "model": content.get("model", path.parent.name)})
    return results


def results_markdown(results: Sequence[Mapping[str, Any]], title: str) -> str:
    """Table III across models: one block per model, one row per strategy, in percent."""
    header = ["Method", "Strategy", *MEAN_KEYS]
    cells = []
    for result in results:
        for i, (strategy, values) in enumerate(result["rows"].items()):
            metrics = (percent(_value(values, key)) for key in MEAN_KEYS)
            cells.append([result["model"] if i == 0 else "", strategy, *metrics])
    align = ["left", "left", *(["right"] * len(MEAN_KEYS))]
    return markdown_table(header, cells, title, "per-image averaged, %", align=align)


def results_csv(results: Sequence[Mapping[str, Any]]) -> str:
    """Table III across models as CSV text: one row per model and strategy (fractions)."""
    rows = [
        [
            result["model"],
            strategy,
            result.get("partition", ""),
            result.get("lambda", ""),
            *(_value(values, key) for key in MEAN_KEYS),
        ]
        for result in results
        for strategy, values in result["rows"].items()
    ]
    return csv_text(["model", "strategy", "partition", "lambda", *MEAN_KEYS], rows)


def strategy_label(strategy: str) -> str:
    """Display name of a strategy (``op`` -> ``O-P``); unknown keys print as they are."""
    if strategy in STRATEGY_LABELS:  # narrows to a Strategy, which ``dict.get`` would not
        return STRATEGY_LABELS[strategy]
    return strategy


def _json_with(path: Path, key: str, problem: str) -> dict[str, Any]:
    """A JSON object read from ``path`` that holds a mapping under ``key``, else a DataError."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable JSON ({exc})") from exc
    if not isinstance(content, dict) or not isinstance(content.get(key), dict):
        raise DataError(f"{path}: {problem}")
    return content
