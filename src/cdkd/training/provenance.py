"""What a run depends on, recorded in its provenance file: code, packages, data, sources."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cdkd.errors import DataError
from cdkd.files import write_json_atomic
from cdkd.runs.layout import RunFolder
from cdkd.runs.meta import CheckpointMeta
from cdkd.version import git_state

log = logging.getLogger(__name__)

# Distributions whose versions every run records.
RECORDED_PACKAGES = (
    "cdkd",
    "torch",
    "lightning",
    "timm",
    "segmentation-models-pytorch",
    "albumentations",
    "torchmetrics",
    "numpy",
)


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that determine a run's numbers."""
    versions: dict[str, str | None] = {}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def write_provenance(
    run_dir: Path, datamodule: Any, meta: CheckpointMeta, resumed_from: str | None
) -> None:
    """Record what this start of the run depends on in the run folder's provenance file.

    Code (git commit and dirtiness), package versions, the command line, the CAR index
    checksums of every split and, for the student, the SHA-256 of M_O and the teachers.
    Earlier starts of the same run (before a resume) are kept under ``previous``.
    """
    folder = RunFolder(run_dir)
    path = folder.provenance
    record: dict[str, Any] = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv,
        "resumed_from": resumed_from,
        "config": folder.config.name,
        "git": git_state(),
        "versions": package_versions(),
        "car_index_sha256": index_checksums(datamodule),
        "teacher_sha256": {b: src.sha256 for b, src in meta.teachers.items()} or None,
        "init_sha256": meta.init.sha256 if meta.init is not None else None,
    }
    previous: list[Any] = []
    if resumed_from is not None and path.is_file():
        try:
            earlier = json.loads(path.read_text(encoding="utf-8"))
            previous = [*earlier.pop("previous", []), earlier]
        except (ValueError, AttributeError):
            log.warning("%s: unreadable, starting a new provenance record", path)
    write_json_atomic(path, {**record, "previous": previous})


def index_checksums(datamodule: Any) -> dict[str, str | None]:
    """CAR index checksum of each split (None for a split the run does not have)."""
    checksums: dict[str, str | None] = {}
    for split in ("train", "val", "test"):
        try:
            checksums[split] = datamodule.index_checksum(split)
        except DataError:
            checksums[split] = None
    return checksums
