"""``python -m cdkd.import``: released checkpoints into the run layout, ready to evaluate.

``ckpt=PATH`` is a distilled student: an official MTKD student checkpoint (its teachers
``teacher_s/m/l`` are imported too), an Open-CD checkpoint or any format
:mod:`cdkd.models.convert.formats` reads. ``teachers={small: PATH, ...}`` and
``baseline=PATH`` import separately released teachers and M_O (an O-P setup). Each network
becomes a cdkd checkpoint at its stage's best checkpoint of the run layout (the student under
``distill.lambda``, by default the model's), with a :class:`~cdkd.runs.meta.CheckpointMeta`
record naming the source file and its SHA-256; ``cdkd.eval`` and ``cdkd.analyze`` then work
on the folder without training.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from rich.console import Console

from cdkd.cli.common import command
from cdkd.config import plain
from cdkd.errors import CheckpointError, ConfigError
from cdkd.files import atomic_path, sha256_of, write_json_atomic
from cdkd.models.convert.formats import (
    NETWORK_PREFIX,
    STUDENT,
    TEACHER_BUCKETS,
    Checkpoint,
    check_architecture,
    read_checkpoint,
    to_cdkd,
)
from cdkd.models.registry import model_from_state
from cdkd.runs.layout import BASELINE, RunFolder, RunLayout
from cdkd.runs.lock import RunLock
from cdkd.runs.meta import CheckpointMeta, PartitionMeta, Source


@dataclass(frozen=True)
class Job:
    """One network to write: where, from which file and network in it, for which stage."""

    stage: str
    bucket: str | None
    source: Checkpoint
    network: str
    folder: RunFolder


def _read(path: Any, model: str) -> Checkpoint:
    checkpoint = read_checkpoint(Path(str(path)).expanduser())
    check_architecture(checkpoint, model)
    return checkpoint


def plan(cfg: DictConfig) -> list[Job]:
    """The networks ``cfg`` imports, each with its run folder; nothing is written."""
    if cfg.ckpt is None and not cfg.teachers and cfg.baseline is None:
        raise ConfigError(
            "nothing to import: give ckpt=PATH, teachers={small: PATH, ...} or baseline=PATH"
        )
    model = str(cfg.model.name)
    layout = RunLayout.from_config(cfg)
    stages: Mapping[str, str] = cfg.partition.teacher_stages
    jobs: list[Job] = []
    if cfg.baseline is not None:
        jobs.append(
            Job(BASELINE, None, _read(cfg.baseline, model), STUDENT, layout.stage(BASELINE))
        )
    given = dict(cfg.teachers or {})
    unknown = sorted(set(given) - set(stages))
    if unknown:
        raise ConfigError(
            f"teachers given for unknown bucket(s) {unknown}; buckets: {list(stages)}"
        )
    for bucket, path in given.items():
        folder = layout.stage(stages[bucket])
        jobs.append(Job(stages[bucket], bucket, _read(path, model), STUDENT, folder))
    if cfg.ckpt is not None:
        student = _read(cfg.ckpt, model)
        found = {TEACHER_BUCKETS[name]: name for name in student.teachers}
        if found and set(found) != set(stages):
            raise ConfigError(
                f"{student.path}: holds teachers for buckets {sorted(found)}, partition "
                f"'{cfg.partition.name}' has {sorted(stages)} (partition=two for two teachers)"
            )
        for bucket, name in found.items():
            if bucket in given:
                raise ConfigError(
                    f"teacher '{bucket}' given twice: in teachers= and in {student.path}"
                )
            jobs.append(Job(stages[bucket], bucket, student, name, layout.stage(stages[bucket])))
        lam = cfg.distill["lambda"]
        jobs.append(Job(STUDENT, None, student, STUDENT, layout.stage(STUDENT, lam)))
    return jobs


def checkpoint_meta(cfg: DictConfig, job: Job, teachers: Mapping[str, Path]) -> CheckpointMeta:
    """The record of one imported network (the student's teachers: their imported files)."""
    model = cfg.model
    common: dict[str, Any] = {
        "model": str(model.name),
        "stage": job.stage,
        "bucket": job.bucket,
        "data": str(cfg.data.name),
        "partition": PartitionMeta.from_mapping(plain(cfg.partition)),
        "mean": tuple(float(v) for v in model.normalize.mean),
        "std": tuple(float(v) for v in model.normalize.std),
        "init": Source(str(job.source.path), sha256_of(job.source.path)),
    }
    if job.stage != STUDENT:
        return CheckpointMeta(**common)
    return CheckpointMeta(
        **common,
        distill_lambda=float(cfg.distill["lambda"]),
        # The official code routes by the CAR of every non-zero label pixel (see car_rule).
        car_rule="official" if job.source.teachers else str(cfg.distill.car_rule),
        teacher_model=str(model.name),
        teachers={bucket: Source(str(path), sha256_of(path)) for bucket, path in teachers.items()},
    )


def write_network(cfg: DictConfig, job: Job, meta: CheckpointMeta) -> None:
    """Convert, load (strictly) and save one network as a cdkd checkpoint with ``meta``."""
    import lightning

    model = str(cfg.model.name)
    kwargs = plain(cfg.model.kwargs) or {}
    state = to_cdkd(job.source, model, job.network)
    what = job.source.describe() + ("" if job.network == STUDENT else f", {job.network}")
    network = model_from_state(
        model, state, f"{job.source.path} ({what}) does not fit '{model}'", **kwargs
    )
    checkpoint = {
        "state_dict": {NETWORK_PREFIX + k: v for k, v in network.state_dict().items()},
        "hyper_parameters": {"model": model, "model_kwargs": kwargs, "meta": meta.to_hparams()},
        "epoch": 0,
        "global_step": 0,
        "pytorch-lightning_version": lightning.__version__,
    }
    with atomic_path(job.folder.best) as tmp:
        torch.save(checkpoint, tmp)
    write_json_atomic(
        job.folder.provenance,
        {
            "imported_from": str(job.source.path),
            "sha256": meta.init.sha256 if meta.init else None,
            "format": job.source.format,
            "network": job.network,
        },
    )


@command("import")
def main(cfg: DictConfig) -> None:
    """Import the checkpoints ``cfg`` names into the run layout of its model and data."""
    jobs = plan(cfg)
    existing = [str(job.folder.best) for job in jobs if job.folder.best.exists()]
    if existing and not cfg.force:
        raise CheckpointError(f"{existing[0]}: exists already; force=true replaces it")
    console = Console()
    teachers: dict[str, Path] = {}
    for job in sorted(jobs, key=lambda j: j.stage == STUDENT):  # the student records its teachers
        if job.stage == STUDENT:
            stages = cfg.partition.teacher_stages
            layout = RunLayout.from_config(cfg)
            teachers = {
                b: layout.stage(s).best for b, s in stages.items() if layout.stage(s).best.is_file()
            }
        with RunLock(job.folder.path):
            write_network(cfg, job, checkpoint_meta(cfg, job, teachers))
        console.print(f"{job.stage}: {job.folder.best} <- {job.source.path} ({job.network})")
    if not any(job.stage == BASELINE for job in jobs):
        console.print("note: O-P (strategy=op) also needs M_O: import it with baseline=PATH")
