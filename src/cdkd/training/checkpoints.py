"""Reading cdkd checkpoints: the recorded setup, and the network they hold."""

from __future__ import annotations

from pathlib import Path

from cdkd.models import ChangeModel
from cdkd.models.checkpoint import load_network
from cdkd.partition import PartitionScheme
from cdkd.runs.meta import read_meta


def load_teacher(
    path: str | Path, expected_model: str, scheme: PartitionScheme, bucket: str
) -> ChangeModel:
    """Load a CAR-partition teacher, checking its architecture, scheme and bucket.

    A teacher trained for another partition (other thresholds, or another bucket) would
    silently distil the wrong knowledge, so each mismatch is a :class:`CheckpointError`.
    """
    read_meta(path, expected_model).check_teacher(path, bucket, scheme.thresholds, scheme.name)
    return load_network(path, expected_model=expected_model)
