"""Reading cdkd checkpoints: the recorded setup, and the network they hold."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from cdkd.checkpoint_meta import read_meta
from cdkd.errors import ConfigError
from cdkd.models import ChangeModel
from cdkd.models.checkpoint import load_network
from cdkd.partition import PartitionScheme


def load_teacher(
    path: str | Path, expected_model: str, scheme: PartitionScheme, bucket: str
) -> ChangeModel:
    """Load a CAR-partition teacher, checking its architecture, scheme and bucket.

    A teacher trained for another partition (other thresholds, or another bucket) would
    silently distil the wrong knowledge, so each mismatch is a :class:`CheckpointError`.
    """
    read_meta(path, expected_model).check_teacher(path, bucket, scheme.thresholds, scheme.name)
    return load_network(path, expected_model=expected_model)


def teacher_paths(
    teacher_dir: str | Path,
    teacher_stages: Mapping[str, str],
    run_suffix: str,
    explicit: Mapping[str, str] | None = None,
) -> dict[str, Path]:
    """Checkpoint of each bucket's teacher.

    ``explicit[bucket]`` when given, else the run-folder convention
    ``<teacher_dir>/<teacher stage><run_suffix>/best.ckpt``.
    """
    explicit = dict(explicit or {})
    unknown = sorted(set(explicit) - set(teacher_stages))
    if unknown:
        raise ConfigError(
            f"teachers given for unknown bucket(s) {unknown}; buckets: {list(teacher_stages)}"
        )
    return {
        bucket: Path(explicit.get(bucket) or Path(teacher_dir, f"{stage}{run_suffix}", "best.ckpt"))
        for bucket, stage in teacher_stages.items()
    }
