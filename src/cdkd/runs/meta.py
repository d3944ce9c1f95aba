"""What a cdkd checkpoint records about how it was made: one versioned record.

Training writes :meth:`CheckpointMeta.to_hparams` as the checkpoint's
``hyper_parameters["meta"]``; every reader goes through :func:`read_meta` /
:meth:`CheckpointMeta.from_hparams`, which also read the checkpoints written before the record
had a version (version 1: stage, bucket, data, normalisation and partition under ``meta``, the
student's sources, lambda and routing at the top level of the hyper-parameters).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdkd.errors import CheckpointError
from cdkd.files import sha256_of
from cdkd.models.checkpoint import read_hparams

#: The version :meth:`CheckpointMeta.to_hparams` writes; newer records are refused.
META_VERSION = 2


@dataclass(frozen=True)
class Source:
    """A checkpoint a run started from or learned from, with its SHA-256 when recorded."""

    path: str
    sha256: str | None = None

    @classmethod
    def hashed(cls, path: str | Path) -> Source:
        """``path`` with the SHA-256 of its bytes (the orchestrator hashes, not the module)."""
        if not Path(path).is_file():
            raise CheckpointError(f"{path}: checkpoint not found")
        return cls(str(path), sha256_of(path))

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256}


@dataclass(frozen=True)
class PartitionMeta:
    """The CAR partition a run was trained with (see :class:`cdkd.partition.PartitionScheme`)."""

    name: str
    thresholds: tuple[float, ...]
    buckets: tuple[str, ...] = ()
    teacher_stages: Mapping[str, str] = field(default_factory=dict)
    run_suffix: str = ""

    @classmethod
    def from_mapping(cls, value: Mapping[str, Any]) -> PartitionMeta:
        """From a ``partition`` config or recorded mapping (missing keys take defaults)."""
        return cls(
            name=str(value.get("name", "")),
            thresholds=tuple(float(t) for t in value.get("thresholds", ())),
            buckets=tuple(str(b) for b in value.get("buckets", ())),
            teacher_stages=dict(value.get("teacher_stages") or {}),
            run_suffix=str(value.get("run_suffix") or ""),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "thresholds": list(self.thresholds),
            "buckets": list(self.buckets),
            "teacher_stages": dict(self.teacher_stages),
            "run_suffix": self.run_suffix,
        }


@dataclass(frozen=True)
class CheckpointMeta:
    """How a checkpoint was made: model, stage, data, partition, normalisation and sources.

    ``distill_lambda`` is set for distilled students only (with ``car_rule``,
    ``teacher_model``, ``init`` and ``teachers``); fields an old checkpoint did not record
    are ``None``.
    """

    model: str
    stage: str | None = None
    bucket: str | None = None
    data: str | None = None
    partition: PartitionMeta | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    distill_lambda: float | None = None
    car_rule: str | None = None
    teacher_model: str | None = None
    init: Source | None = None
    teachers: Mapping[str, Source] = field(default_factory=dict)
    version: int = META_VERSION

    @property
    def distilled(self) -> bool:
        """Whether this is a distilled student."""
        return self.distill_lambda is not None

    @property
    def normalize(self) -> dict[str, list[float]] | None:
        """The recorded normalisation as ``{mean, std}`` (0-255 units), or ``None``."""
        if self.mean is None or self.std is None:
            return None
        return {"mean": list(self.mean), "std": list(self.std)}

    def to_hparams(self) -> dict[str, Any]:
        """The plain record stored as ``hyper_parameters["meta"]`` (the current version)."""
        distill = None
        if self.distilled:
            distill = {
                "lambda": self.distill_lambda,
                "car_rule": self.car_rule,
                "teacher_model": self.teacher_model,
            }
        return {
            "version": META_VERSION,
            "model": self.model,
            "stage": self.stage,
            "bucket": self.bucket,
            "data": self.data,
            "normalize": self.normalize,
            "partition": self.partition.to_dict() if self.partition is not None else None,
            "distill": distill,
            "sources": {
                "init": self.init.to_dict() if self.init is not None else None,
                "teachers": {bucket: src.to_dict() for bucket, src in self.teachers.items()},
            },
        }

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any], path: str | Path = "") -> CheckpointMeta:
        """The record of a checkpoint's hyper-parameters, of any version written so far.

        Raises :class:`CheckpointError` naming ``path`` for a malformed record or one of a
        newer version than :data:`META_VERSION`.
        """
        meta = hparams.get("meta") or {}
        if not isinstance(meta, Mapping):
            raise CheckpointError(f"{path}: checkpoint metadata is not a mapping")
        version = meta.get("version", 1)
        if not isinstance(version, int) or version < 1:
            raise CheckpointError(f"{path}: checkpoint metadata version {version!r} is not valid")
        if version > META_VERSION:
            raise CheckpointError(
                f"{path}: checkpoint metadata version {version} is newer than this cdkd reads "
                f"(up to {META_VERSION}); upgrade cdkd"
            )
        try:
            return _read_v1(hparams, meta) if version == 1 else _read_v2(hparams, meta)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: unreadable checkpoint metadata ({exc!r})") from exc

    def check_evaluation(
        self,
        path: str | Path,
        thresholds: Sequence[float],
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        """Refuse evaluating with another setup than the checkpoint was trained with.

        The data normalisation (mean/std) must match for every checkpoint. The partition
        thresholds must match for checkpoints that depend on them: CAR-partition teachers (a
        recorded bucket) and distilled students; a baseline trained on all data does not.
        """
        given = [float(v) for v in mean], [float(v) for v in std]
        recorded = (
            list(self.mean) if self.mean is not None else given[0],
            list(self.std) if self.std is not None else given[1],
        )
        if recorded != given:
            raise CheckpointError(
                f"{path}: trained with normalisation mean/std {recorded[0]} / {recorded[1]}, "
                f"evaluated with {given[0]} / {given[1]} (force=true to evaluate anyway)"
            )
        if self.bucket is None and not self.distilled:
            return
        trained = list(self.partition.thresholds) if self.partition is not None else []
        if trained != [float(t) for t in thresholds]:
            raise CheckpointError(
                f"{path}: trained with partition thresholds {trained}, evaluated with "
                f"{[float(t) for t in thresholds]} (force=true to evaluate anyway)"
            )

    def check_teacher(
        self, path: str | Path, bucket: str, thresholds: Sequence[float], partition: str
    ) -> None:
        """Refuse a teacher trained for another bucket or other partition thresholds."""
        trained = self.partition.thresholds if self.partition is not None else ()
        expected = tuple(float(t) for t in thresholds)
        if self.bucket != bucket or trained != expected:
            raise CheckpointError(
                f"{path}: teacher was trained on bucket '{self.bucket}' with thresholds "
                f"{list(trained)}, expected bucket '{bucket}' with thresholds "
                f"{list(expected)} (partition '{partition}')"
            )


def read_meta(path: str | Path, expected_model: str | None = None) -> CheckpointMeta:
    """The :class:`CheckpointMeta` of a cdkd checkpoint (one line if unreadable or foreign)."""
    return CheckpointMeta.from_hparams(read_hparams(path, expected_model), path)


def _floats(values: Any) -> tuple[float, ...] | None:
    return None if values is None else tuple(float(v) for v in values)


def _partition(value: Any) -> PartitionMeta | None:
    return PartitionMeta.from_mapping(value) if value else None


def _source(value: Any) -> Source | None:
    return Source(str(value["path"]), value.get("sha256")) if value else None


def _read_v2(hparams: Mapping[str, Any], meta: Mapping[str, Any]) -> CheckpointMeta:
    normalize = meta.get("normalize") or {}
    distill = meta.get("distill") or {}
    sources = meta.get("sources") or {}
    return CheckpointMeta(
        model=str(meta.get("model") or hparams["model"]),
        stage=meta.get("stage"),
        bucket=meta.get("bucket"),
        data=meta.get("data"),
        partition=_partition(meta.get("partition")),
        mean=_floats(normalize.get("mean")),
        std=_floats(normalize.get("std")),
        distill_lambda=float(distill["lambda"]) if distill else None,
        car_rule=distill.get("car_rule"),
        teacher_model=distill.get("teacher_model"),
        init=_source(sources.get("init")),
        teachers={b: Source(**s) for b, s in (sources.get("teachers") or {}).items()},
        version=META_VERSION,
    )


def _read_v1(hparams: Mapping[str, Any], meta: Mapping[str, Any]) -> CheckpointMeta:
    """Version 1: ``meta`` without a version; a student's settings beside it in the hparams."""
    normalize = meta.get("normalize") or {}
    distilled = "distill_lambda" in hparams
    hashes = hparams.get("teacher_sha256") or {}
    teachers = {
        str(b): Source(str(p), hashes.get(b)) for b, p in (hparams.get("teachers") or {}).items()
    }
    init = Source(str(hparams["init"]), hparams.get("init_sha256")) if "init" in hparams else None
    return CheckpointMeta(
        model=str(hparams["model"]),
        stage=meta.get("stage"),
        bucket=meta.get("bucket"),
        data=meta.get("data"),
        partition=_partition(meta.get("partition") or hparams.get("partition")),
        mean=_floats(normalize.get("mean")),
        std=_floats(normalize.get("std")),
        distill_lambda=float(hparams["distill_lambda"]) if distilled else None,
        car_rule=hparams.get("car_rule", "paper") if distilled else None,
        teacher_model=(hparams.get("teacher_model") or hparams["model"]) if distilled else None,
        init=init,
        teachers=teachers,
        version=1,
    )
