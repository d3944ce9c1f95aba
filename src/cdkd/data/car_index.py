"""The CAR index of a split: change area ratio and size of every pair, built once and cached.

Building the index decodes every label and both images of every pair, so unreadable files,
bad label values and size mismatches surface before training instead of in the middle of an
epoch. The result is cached as JSON and rebuilt whenever a file of the split is added, removed
or modified (the fingerprint covers names, sizes and modification times) or when
``data.label_threshold`` changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from cdkd.data.io import decode_label, read_image
from cdkd.data.layout import Sample
from cdkd.errors import DataError
from cdkd.files import write_json_atomic
from cdkd.partition import IGNORE_INDEX, PartitionScheme

log = logging.getLogger(__name__)

#: Bumped whenever the cached format or the CAR definition changes, so old caches are rebuilt.
INDEX_VERSION = 1


@dataclass(frozen=True)
class IndexRow:
    """CAR and size of one pair, keyed by the file name in ``A/``."""

    name: str
    car: float
    height: int
    width: int


class CarIndex:
    """The rows of one split in dataset order, with their content checksum.

    ``thresholded`` names the pairs whose label had intermediate values (neither 0/255 nor
    0/1), binarised by ``data.label_threshold``.
    """

    def __init__(self, rows: Sequence[IndexRow], thresholded: Iterable[str] = ()) -> None:
        self._rows = tuple(rows)
        self.thresholded = frozenset(thresholded)

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[IndexRow]:
        return iter(self._rows)

    def __getitem__(self, position: int) -> IndexRow:
        return self._rows[position]

    @property
    def rows(self) -> tuple[IndexRow, ...]:
        """All rows, in dataset order."""
        return self._rows

    @property
    def cars(self) -> np.ndarray:
        """CAR of every row as ``float64`` (exact ratios, so boundary values compare exactly)."""
        return np.asarray([row.car for row in self._rows], dtype=np.float64)

    @property
    def sizes(self) -> set[tuple[int, int]]:
        """The distinct ``(height, width)`` of the split's images."""
        return {(row.height, row.width) for row in self._rows}

    @property
    def checksum(self) -> str:
        """SHA-256 of the rows' canonical JSON, recorded with results for provenance."""
        payload = json.dumps(
            [list(asdict(row).values()) for row in self._rows], separators=(",", ":")
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def subset(self, positions: Sequence[int]) -> CarIndex:
        """The rows at ``positions``, in that order."""
        rows = [self._rows[p] for p in positions]
        return CarIndex(rows, self.thresholded & {row.name for row in rows})

    def positions_in(self, scheme: PartitionScheme, bucket: str) -> list[int]:
        """Positions of the rows whose CAR falls in ``bucket`` under ``scheme``."""
        target = scheme.index(bucket)
        buckets = np.atleast_1d(scheme.bucket_of(self.cars))
        return [int(p) for p in np.flatnonzero(buckets == target)]


def label_car(mask: np.ndarray, ignore_index: int = IGNORE_INDEX) -> float:
    """Changed pixels over valid pixels of one label, in double precision.

    Same definition as :func:`cdkd.partition.change_area_ratio` (ignore pixels excluded, an
    all-ignored label has CAR 0), computed in ``float64`` so that e.g. 20 of 400 pixels gives
    exactly the threshold 0.05 and falls on the documented side of the partition rule.
    """
    valid = mask != ignore_index
    n_valid = int(np.count_nonzero(valid))
    return int(np.count_nonzero((mask == 1) & valid)) / n_valid if n_valid else 0.0


def scan_sample(sample: Sample, label_threshold: int | None = None) -> tuple[IndexRow, bool]:
    """Decode the three files of a pair, check their sizes agree and measure the label's CAR.

    Returns the row and whether the label had intermediate values (see :func:`decode_label`).
    """
    mask, intermediate = decode_label(sample.label, label_threshold)
    height, width = mask.shape
    for path in (sample.image1, sample.image2):
        image = read_image(path)
        if image.shape[:2] != mask.shape:
            raise DataError(
                f"{path}: size {image.shape[0]}x{image.shape[1]} differs from its label "
                f"{sample.label.name} ({height}x{width})"
            )
    row = IndexRow(name=sample.name, car=label_car(mask), height=height, width=width)
    return row, intermediate


def fingerprint(samples: Sequence[Sample]) -> str:
    """Hash of the names, sizes and modification times of every file of the split."""
    digest = hashlib.sha256()
    for sample in samples:
        for path in (sample.image1, sample.image2, sample.label):
            stat = path.stat()
            digest.update(
                f"{path.parent.name}/{path.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode()
            )
    return digest.hexdigest()


def cache_path(cache_dir: str | Path, split_dir: str | Path) -> Path:
    """Cache file of one split folder; the folder's absolute path keeps shared cache dirs apart."""
    split_dir = Path(split_dir).resolve()
    tag = hashlib.sha256(str(split_dir).encode("utf-8")).hexdigest()[:12]
    return Path(cache_dir) / f"car_index-{split_dir.name}-{tag}.json"


def build_car_index(
    samples: Sequence[Sample],
    cache_file: str | Path | None = None,
    progress: bool = True,
    description: str = "CAR index",
    label_threshold: int | None = None,
) -> CarIndex:
    """The CAR index of ``samples``, read from ``cache_file`` when it is still valid.

    Otherwise every pair is decoded (on a thread pool, with a progress bar) with labels read
    strictly or binarised at ``label_threshold``, and the index is written to ``cache_file``
    atomically. A cache that cannot be written only costs a warning.
    """
    names = [sample.name for sample in samples]
    stamp = fingerprint(samples)
    if cache_file is not None:
        cached = _load_cache(Path(cache_file), stamp, names, label_threshold)
        if cached is not None:
            return cached
    index = _scan_all(samples, progress, description, label_threshold)
    if cache_file is not None:
        _save_cache(Path(cache_file), stamp, index, label_threshold)
    return index


def _scan_all(
    samples: Sequence[Sample], progress: bool, description: str, label_threshold: int | None
) -> CarIndex:
    """Scan every pair on a thread pool; the first bad file stops the scan at once."""
    workers = max(1, min(8, os.cpu_count() or 1))
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    rows: list[IndexRow] = []
    thresholded: list[str] = []
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        with Progress(*columns, disable=not progress, transient=True) as bar:
            task = bar.add_task(description, total=len(samples))
            for row, intermediate in pool.map(
                lambda sample: scan_sample(sample, label_threshold), samples
            ):
                rows.append(row)
                if intermediate:
                    thresholded.append(row.name)
                bar.advance(task)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return CarIndex(rows, thresholded)


def _load_cache(
    path: Path, stamp: str, names: list[str], label_threshold: int | None
) -> CarIndex | None:
    """The cached index if ``path`` holds one for exactly these files and label rule."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
        if content["version"] != INDEX_VERSION or content["fingerprint"] != stamp:
            return None
        if content.get("label_threshold") != label_threshold:
            return None
        index = CarIndex(
            [IndexRow(**row) for row in content["rows"]], content.get("thresholded", [])
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if [row.name for row in index] != names:
        return None
    log.info("CAR index read from %s", path)
    return index


def _save_cache(path: Path, stamp: str, index: CarIndex, label_threshold: int | None) -> None:
    content = {
        "version": INDEX_VERSION,
        "fingerprint": stamp,
        "checksum": index.checksum,
        "label_threshold": label_threshold,
        "thresholded": sorted(index.thresholded),
        "rows": [asdict(row) for row in index],
    }
    try:
        write_json_atomic(path, content)
    except OSError as exc:
        log.warning("%s: CAR index cache not written (%s); set data.cache_dir", path, exc)
