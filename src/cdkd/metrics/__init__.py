"""Evaluation metrics for binary change detection."""

from cdkd.metrics.change import (
    CLASSES,
    EMPTY_POLICIES,
    MEAN_KEYS,
    METRIC_KEYS,
    ChangeMetrics,
    EmptyPolicy,
    check_empty_policy,
    confusion_counts,
    scores_from_counts,
    summarize_counts,
)

__all__ = [
    "CLASSES",
    "EMPTY_POLICIES",
    "MEAN_KEYS",
    "METRIC_KEYS",
    "ChangeMetrics",
    "EmptyPolicy",
    "check_empty_policy",
    "confusion_counts",
    "scores_from_counts",
    "summarize_counts",
]
