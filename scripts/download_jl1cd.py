"""Download JL1-CD from the Hugging Face Hub and arrange it as ROOT/{train,test}/{A,B,label}.

Usage::

    pip install huggingface_hub
    python scripts/download_jl1cd.py --out data/JL1-CD

JL1-CD (5000 pairs of 512x512 Jilin-1 images, 4000 train / 1000 test) is published as the
Hugging Face dataset ``circleLZY/JL1-CD``. The exact file layout of that repository was not
verified offline: the script accepts split folders ``train/`` and ``test/`` (optionally
``val/``) holding ``A/B/label`` or ``time1/time2/label`` sub-folders anywhere in the snapshot,
also inside zip or tar archives, and stops with a message describing what it found otherwise.
In that case, download the dataset by hand (the MTKD-CD README also links Google Drive and
Baidu Disk copies) and arrange it in the layout above. Validation uses the first 100 training
pairs unless a ``val/`` folder exists (``conf/data/jl1cd.yaml``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from cdkd.data.layout import discover_split, split_folders
from cdkd.errors import DataError

REPO_ID = "circleLZY/JL1-CD"
SPLITS = ("train", "val", "test")
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/JL1-CD"), help="dataset root")
    parser.add_argument("--revision", default=None, help="dataset revision (default: main)")
    parser.add_argument(
        "--keep-download", action="store_true", help="keep the raw snapshot in OUT/.download"
    )
    return parser.parse_args(argv)


def download(staging: Path, revision: str | None) -> Path:
    """Fetch a snapshot of the dataset repository into ``staging``."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        sys.exit("huggingface_hub is not installed: pip install huggingface_hub")
    print(f"downloading {REPO_ID} to {staging} ...")
    path = snapshot_download(
        repo_id=REPO_ID, repo_type="dataset", revision=revision, local_dir=staging
    )
    return Path(path)


def unpack_archives(folder: Path) -> None:
    """Extract every zip/tar archive of ``folder`` next to itself, once."""
    for archive in sorted(folder.rglob("*")):
        name = archive.name.lower()
        if not archive.is_file() or not name.endswith(ARCHIVE_SUFFIXES):
            continue
        target = archive.parent / (archive.name + ".extracted")
        if target.is_dir():
            continue
        print(f"extracting {archive.name} ...")
        extra = {} if name.endswith(".zip") else {"filter": "data"}
        shutil.unpack_archive(archive, target.with_suffix(".partial"), **extra)
        target.with_suffix(".partial").rename(target)


def find_splits(folder: Path) -> dict[str, Path]:
    """Split folders (``train``/``val``/``test`` with date and label sub-folders) in ``folder``."""
    found: dict[str, Path] = {}
    for candidate in sorted(p for p in folder.rglob("*") if p.is_dir()):
        split = candidate.name.lower()
        if split not in SPLITS:
            continue
        try:
            split_folders(candidate)
        except DataError:
            continue
        if split in found:
            raise DataError(f"{candidate}: second '{split}' split besides {found[split]}")
        found[split] = candidate
    return found


def describe(folder: Path, depth: int = 2) -> str:
    """A short listing of the first levels of ``folder`` for error messages."""
    lines = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if len(rel.parts) <= depth and not any(p.startswith(".") for p in rel.parts):
            lines.append(f"  {rel}{'/' if path.is_dir() else ''}")
    return "\n".join(lines[:40]) or "  (empty)"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out
    if all((out / split).is_dir() for split in ("train", "test")):
        print(f"{out}: train/ and test/ already present, nothing to do")
        return 0
    staging = out / ".download"
    snapshot = download(staging, args.revision)
    unpack_archives(snapshot)
    splits = find_splits(snapshot)
    if "train" not in splits or "test" not in splits:
        print(
            f"{snapshot}: layout not recognised (need train/ and test/ folders with A, B and "
            f"label sub-folders); found:\n{describe(snapshot)}\n"
            f"Arrange the data by hand as {out}/{{train,test}}/{{A,B,label}}/NAME.png",
            file=sys.stderr,
        )
        return 1
    for split, source in splits.items():
        target = out / split
        if target.exists():
            print(f"{target}: exists, left as it is")
            continue
        shutil.move(str(source), str(target))
        print(f"{split}: {len(discover_split(target))} pairs in {target}")
    if not args.keep_download:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"JL1-CD is ready at {out}; train with: python -m cdkd.train data=jl1cd")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DataError as exc:
        sys.exit(str(exc))
