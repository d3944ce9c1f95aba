"""Results tables: paper-style percentages, Markdown layout and rich tables."""

from __future__ import annotations

import math

import pytest
from rich.console import Console
from rich.table import Table

from cdkd.analysis import metrics_table, percent, strategy_markdown, strategy_table
from cdkd.metrics import METRIC_KEYS

ROWS = {
    "-": {"mIoU": 0.71254, "mAcc": 0.7891, "mPrecision": 0.84527, "mFscore": 0.7733},
    "O-P": {"mIoU": 0.71056, "mAcc": 0.78374, "mPrecision": 0.8428, "mFscore": 0.77209},
    "MTKD": {"mIoU": 0.7272, "mAcc": 0.8028, "mPrecision": 0.84664, "mFscore": 0.788},
}


def render(table: Table) -> str:
    console = Console(width=120, record=True, color_system=None)
    console.print(table)
    return console.export_text()


def values_in_row(table: Table, row: int) -> list[str]:
    return [list(column.cells)[row] for column in table.columns[2:]]


def test_percent_formats_like_the_paper() -> None:
    assert percent(0.71254) == "71.25"
    assert percent(0.78906) == "78.91"
    assert percent(1.0) == "100.00"
    assert percent(0.0) == "0.00"
    assert percent(math.nan) == "n/a"


def test_strategy_markdown() -> None:
    text = strategy_markdown(ROWS, "IFN on JL1-CD test")
    lines = text.strip().splitlines()
    assert lines[0] == "**IFN on JL1-CD test**"
    assert lines[2] == "| Strategy | mIoU | mAcc | mPrecision | mFscore |"
    assert lines[3].count("|") == 6
    assert lines[4] == "| - | 71.25 | 78.91 | 84.53 | 77.33 |"
    assert lines[5] == "| O-P | 71.06 | 78.37 | 84.28 | 77.21 |"
    assert lines[6] == "| MTKD | 72.72 | 80.28 | 84.66 | 78.80 |"
    assert len(lines) == 7


def test_strategy_markdown_escapes_pipes() -> None:
    text = strategy_markdown({"a|b": ROWS["-"]}, "t")
    assert "| a\\|b | 71.25 |" in text


def test_strategy_table() -> None:
    table = strategy_table(ROWS, "IFN")
    assert [str(c.header) for c in table.columns] == [
        "Strategy",
        "mIoU",
        "mAcc",
        "mPrecision",
        "mFscore",
    ]
    assert table.row_count == 3
    assert list(table.columns[1].cells) == ["71.25", "71.06", "72.72"]


def test_missing_metric_is_named() -> None:
    with pytest.raises(ValueError, match="'O-P' lacks mFscore"):
        strategy_markdown({"O-P": {"mIoU": 0.5, "mAcc": 0.5, "mPrecision": 0.5}}, "t")


def test_metrics_table_shows_all_values() -> None:
    per_image = {key: (i + 1) / 100 for i, key in enumerate(METRIC_KEYS)}
    pooled = {key: 0.5 for key in METRIC_KEYS}
    result = {"count": 3, "empty_policy": "one", "per_image": per_image, "pooled": pooled}
    table = metrics_table(result, "scores")
    assert table.row_count == 6
    assert [str(c.header) for c in table.columns][2:] == ["IoU", "Acc", "Precision", "Fscore"]
    # Row "mean" of per-image: mIoU, mAcc, mPrecision, mFscore are keys 1-4 -> 1.00 .. 4.00.
    assert values_in_row(table, 0) == ["1.00", "2.00", "3.00", "4.00"]
    # Row "changed" of per-image: IoU_changed is the 6th key -> 6.00, Fscore_changed the 12th.
    assert values_in_row(table, 2) == ["6.00", "8.00", "10.00", "12.00"]
    assert values_in_row(table, 4) == ["50.00"] * 4
    text = render(table)
    assert "per-image averaged" in text
    assert "pooled" in text
    assert "3 images, empty_policy=one" in text
