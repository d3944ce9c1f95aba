"""Presentation of results: tables in the paper's format."""

from cdkd.analysis.tables import metrics_table, percent, strategy_markdown, strategy_table

__all__ = ["metrics_table", "percent", "strategy_markdown", "strategy_table"]
