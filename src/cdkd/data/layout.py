"""Discovering change-detection datasets on disk and pairing their files.

A dataset lives at ``ROOT/{train,val,test}/{A,B,label}/NAME.ext``: the image before the change
in ``A/``, the image after it in ``B/`` and the 0/255 change mask in ``label/``, paired by file
name. SYSU-CD's ``time1/time2/label`` folder names are accepted as well. An image and its label
may differ in suffix (``A/x.jpg`` with ``label/x.png``), so files are paired by stem.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cdkd.data.io import IMAGE_SUFFIXES
from cdkd.errors import DataError
from cdkd.files import natural_key

#: Accepted names of the (before, after, label) folders of a split, in order of preference.
DATE_FOLDERS: tuple[tuple[str, str, str], ...] = (("A", "B", "label"), ("time1", "time2", "label"))

#: Where to get the datasets that have a named config, shown when their root is missing.
DOWNLOAD_HINTS: dict[str, str] = {
    "jl1cd": (
        "download JL1-CD from the Hugging Face dataset circleLZY/JL1-CD, "
        "e.g. `python scripts/download_jl1cd.py --out {root}`"
    ),
    "sysucd": (
        "get SYSU-CD from https://github.com/liumency/SYSU-CD and arrange it as "
        "{root}/{{train,val,test}}/{{time1,time2,label}}"
    ),
}


@dataclass(frozen=True)
class Sample:
    """One bi-temporal pair and its change label; ``name`` is the file name in ``A/``."""

    name: str
    image1: Path
    image2: Path
    label: Path


def require_root(root: str | Path, dataset: str = "folder") -> Path:
    """Return ``root`` as a path, or raise a :class:`DataError` saying where to get the data."""
    path = Path(root).expanduser()
    if path.is_dir():
        return path
    hint = DOWNLOAD_HINTS.get(
        dataset, "expected {root}/{{train,val,test}}/{{A,B,label}}/NAME.png (set data.root)"
    ).format(root=path)
    raise DataError(f"{path}: dataset root not found; {hint}")


def split_folders(split_dir: Path) -> tuple[Path, Path, Path]:
    """The ``(before, after, label)`` folders of one split directory."""
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: split folder not found")
    for names in DATE_FOLDERS:
        folders = tuple(split_dir / name for name in names)
        if all(folder.is_dir() for folder in folders):
            return folders  # type: ignore[return-value]
    expected = " or ".join("/".join(names) for names in DATE_FOLDERS)
    raise DataError(f"{split_dir}: expected sub-folders {expected}")


def list_images(folder: Path) -> dict[str, Path]:
    """Image files of ``folder`` keyed by stem; hidden entries are skipped, others are errors."""
    found: dict[str, Path] = {}
    for entry in folder.iterdir():
        if entry.name.startswith("."):
            continue
        if entry.is_symlink():
            try:
                entry.stat()
            except OSError as exc:  # a link loop or a link to nothing
                raise DataError(f"{entry}: unusable symbolic link ({exc.strerror})") from exc
        if not entry.is_file() or entry.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(
                f"{entry}: not an image file (expected one of {', '.join(IMAGE_SUFFIXES)})"
            )
        if entry.stem in found:
            raise DataError(f"{entry}: same name as {found[entry.stem].name} in {folder}")
        found[entry.stem] = entry
    return found


def discover_split(split_dir: str | Path) -> list[Sample]:
    """All pairs of one split folder in natural order of their names.

    Every image in ``A/`` needs a counterpart with the same stem in ``B/`` and ``label/`` and
    vice versa; the first one missing is reported by name. An empty split is an error too.
    """
    split_dir = Path(split_dir)
    before_dir, after_dir, label_dir = split_folders(split_dir)
    before, after, labels = (list_images(d) for d in (before_dir, after_dir, label_dir))
    _require_counterparts(before, after, after_dir)
    _require_counterparts(before, labels, label_dir)
    _require_counterparts(after, before, before_dir)
    _require_counterparts(labels, before, before_dir)
    if not before:
        raise DataError(f"{split_dir}: empty split (no images in {before_dir})")
    stems = sorted(before, key=lambda stem: natural_key(before[stem].name))
    return [
        Sample(name=before[s].name, image1=before[s], image2=after[s], label=labels[s])
        for s in stems
    ]


def _require_counterparts(
    files: Mapping[str, Path], other: Mapping[str, Path], other_dir: Path
) -> None:
    """Raise for the first file (in natural order) lacking a same-stem file in ``other_dir``."""
    for stem in sorted(files, key=natural_key):
        if stem not in other:
            raise DataError(f"{files[stem]}: no counterpart named {stem}.* in {other_dir}")


def find_pairs(root: Path) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """Unlabelled pairs ``(name, path_a, path_b)`` of a folder, and problems with unmatched files.

    The images of ``root/A`` and ``root/B`` (or ``time1/`` and ``time2/``) are matched by file
    stem, in natural order of the names; each file without a counterpart is one problem line.
    """
    for first, second, _ in DATE_FOLDERS:
        dir_a, dir_b = root / first, root / second
        if dir_a.is_dir() and dir_b.is_dir():
            break
    else:
        raise DataError(f"{root}: expected sub-folders A/ and B/ (or time1/ and time2/)")
    a, b = list_images(dir_a), list_images(dir_b)
    problems = [f"{a[n]}: no counterpart in {dir_b}" for n in sorted(a.keys() - b.keys())]
    problems += [f"{b[n]}: no counterpart in {dir_a}" for n in sorted(b.keys() - a.keys())]
    common = sorted(a.keys() & b.keys(), key=natural_key)
    return [(n, a[n], b[n]) for n in common], problems
