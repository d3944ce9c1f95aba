"""Reading cdkd checkpoints: the recorded setup, and the network they hold."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cdkd.errors import CheckpointError, ConfigError
from cdkd.models import ChangeModel
from cdkd.models.checkpoint import load_network, read_hparams
from cdkd.partition import PartitionScheme


def check_recorded_setup(
    path: str | Path,
    hparams: Mapping[str, Any],
    thresholds: Sequence[float],
    mean: Sequence[float],
    std: Sequence[float],
) -> None:
    """Refuse a checkpoint whose recorded setup differs from the one it is evaluated with.

    The data normalisation (mean/std) must match for every checkpoint. The partition
    thresholds must match for checkpoints that depend on them: CAR-partition teachers (a
    recorded bucket) and distilled students; a baseline trained on all data does not.
    """
    meta = hparams.get("meta") or {}
    normalize = meta.get("normalize") or {}
    recorded = (
        [float(v) for v in normalize.get("mean", mean)],
        [float(v) for v in normalize.get("std", std)],
    )
    given = [float(v) for v in mean], [float(v) for v in std]
    if recorded != given:
        raise CheckpointError(
            f"{path}: trained with normalisation mean/std {recorded[0]} / {recorded[1]}, "
            f"evaluated with {given[0]} / {given[1]} (force=true to evaluate anyway)"
        )
    if meta.get("bucket") is None and "distill_lambda" not in hparams:
        return
    partition = meta.get("partition") or {}
    trained = [float(t) for t in partition.get("thresholds", ())]
    if trained != [float(t) for t in thresholds]:
        raise CheckpointError(
            f"{path}: trained with partition thresholds {trained}, evaluated with "
            f"{[float(t) for t in thresholds]} (force=true to evaluate anyway)"
        )


def load_teacher(
    path: str | Path, expected_model: str, scheme: PartitionScheme, bucket: str
) -> ChangeModel:
    """Load a CAR-partition teacher, checking its architecture, scheme and bucket.

    A teacher trained for another partition (other thresholds, or another bucket) would
    silently distil the wrong knowledge, so each mismatch is a :class:`CheckpointError`.
    """
    meta = read_hparams(path, expected_model).get("meta") or {}
    partition = meta.get("partition") or {}
    thresholds = tuple(float(t) for t in partition.get("thresholds", ()))
    if meta.get("bucket") != bucket or thresholds != scheme.thresholds:
        raise CheckpointError(
            f"{path}: teacher was trained on bucket '{meta.get('bucket')}' with thresholds "
            f"{list(thresholds)}, expected bucket '{bucket}' with thresholds "
            f"{list(scheme.thresholds)} (partition '{scheme.name}')"
        )
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
