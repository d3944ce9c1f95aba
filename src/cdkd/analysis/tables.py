"""Results tables in the paper's format: percentages with two decimals.

Metric values everywhere in the package are fractions in [0, 1]; only these tables turn
them into the percentages that the paper prints (0.71254 -> ``71.25``).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

from rich.table import Table

from cdkd.metrics.change import CLASSES, MEAN_KEYS

_METRIC_NAMES: tuple[str, ...] = ("IoU", "Acc", "Precision", "Fscore")
_RESULT_ROWS: tuple[tuple[str, str], ...] = (
    ("per_image", "per-image averaged"),
    ("pooled", "pooled"),
)


def percent(value: float) -> str:
    """Format a fraction as a percentage with two decimals; NaN prints as ``n/a``."""
    return "n/a" if math.isnan(value) else f"{100.0 * value:.2f}"


def _strategy_cells(rows: Mapping[str, Mapping[str, float]]) -> list[list[str]]:
    cells = []
    for strategy, values in rows.items():
        missing = [key for key in MEAN_KEYS if key not in values]
        if missing:
            raise ValueError(f"strategy {strategy!r} lacks {', '.join(missing)}")
        cells.append([strategy, *(percent(values[key]) for key in MEAN_KEYS)])
    return cells


def strategy_table(rows: Mapping[str, Mapping[str, float]], title: str) -> Table:
    """The paper's Table III layout: one row per strategy, the four m-metrics in percent.

    Args:
        rows: strategy name (e.g. ``"-"``, ``"O-P"``, ``"MTKD"``) -> metrics holding at least
            mIoU, mAcc, mPrecision and mFscore as fractions.
        title: shown above the table.
    """
    table = Table(title=title)
    table.add_column("Strategy")
    for key in MEAN_KEYS:
        table.add_column(key, justify="right")
    for cells in _strategy_cells(rows):
        table.add_row(*cells)
    return table


def strategy_markdown(rows: Mapping[str, Mapping[str, float]], title: str) -> str:
    """The same table as :func:`strategy_table`, as Markdown preceded by a bold title line."""
    header = ["Strategy", *MEAN_KEYS]
    lines = [
        f"**{title}**",
        "",
        _markdown_row(header),
        _markdown_row([":---", *("---:" for _ in MEAN_KEYS)]),
    ]
    lines.extend(_markdown_row(cells) for cells in _strategy_cells(rows))
    return "\n".join(lines) + "\n"


def _markdown_row(cells: list[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def metrics_table(result: Mapping[str, Any], title: str) -> Table:
    """All 12 metrics of a score/eval result, grouped by averaging, in percent.

    Each averaging (per-image averaged, pooled) gets three rows, ``mean`` (the m-metrics),
    ``unchanged`` and ``changed``, under the columns IoU, Acc, Precision and Fscore: the
    layout of the paper's Tables III and IV, narrow enough for an 80-column terminal.

    Args:
        result: ``{"count": N, "per_image": {...}, "pooled": {...}}`` as returned by
            :class:`cdkd.metrics.ChangeMetrics`; an ``empty_policy`` entry, if present, is
            shown in the caption.
        title: shown above the table.
    """
    caption = f"{result['count']} images"
    if "empty_policy" in result:
        caption += f", empty_policy={result['empty_policy']}"
    table = Table(title=title, caption=caption + ", values in %")
    table.add_column("Averaging")
    table.add_column("Class")
    for name in _METRIC_NAMES:
        table.add_column(name, justify="right")
    for field, label in _RESULT_ROWS:
        values = result[field]
        table.add_row(label, "mean", *(percent(values[f"m{name}"]) for name in _METRIC_NAMES))
        for i, cls in enumerate(CLASSES):
            cells = (percent(values[f"{name}_{cls}"]) for name in _METRIC_NAMES)
            table.add_row("", cls, *cells, end_section=i == len(CLASSES) - 1)
    return table


def markdown_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    title: str,
    note: str = "",
    align: Sequence[str] | None = None,
) -> str:
    """A Markdown table under a bold title line and an optional italic note."""
    marks = {"left": ":---", "right": "---:", "center": ":---:"}
    align = align or ["left"] * len(header)
    lines = [f"**{title}**", ""] + ([f"_{note}_", ""] if note else [])
    lines.append(_row(header))
    lines.append("| " + " | ".join(marks[a] for a in align) + " |")
    lines.extend(_row(cells) for cells in rows)
    return "\n".join(lines) + "\n"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """CSV text with floats written to six decimals (NaN as ``nan``)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([f"{v:.6f}" if isinstance(v, float) else v for v in row])
    return buffer.getvalue()
