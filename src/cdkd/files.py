"""File helpers shared across the package: atomic writes, natural sort, hashing.

Every file cdkd writes goes through :func:`atomic_path`: a temporary file beside the target,
synced to disk, then renamed. A kill, a full disk or a missing permission leaves the previous
file intact and ends in one :class:`WriteError` line naming the file and the free space.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cdkd.errors import CdkdError, brief

_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple[Any, ...]:
    """Sort key comparing digit runs as numbers, so ``2.png`` precedes ``10.png``."""
    parts = _DIGITS.split(name)
    return tuple((0, int(p), p) if p.isdigit() else (1, p.lower(), p) for p in parts if p)


class WriteError(CdkdError):
    """A file that could not be written: a full disk, a quota, a read-only or unwritable folder."""


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; sync it and rename it onto ``path`` on success.

    A crash or kill while writing leaves the previous file (or none) in place, never a
    half-written one. A failed write (an ``OSError`` about this file, also when a library
    wraps it in its own exception) becomes a :class:`WriteError`; other errors of the code
    producing the content pass through unchanged.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise write_error(path, exc) from exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _fsync(tmp_path)
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp creates 0600; use the usual mode
        os.replace(tmp_path, path)
        _fsync(path.parent)
    except Exception as exc:
        if isinstance(exc, CdkdError) or not _about(exc, (path, tmp_path)):
            raise
        raise write_error(path, exc) from exc
    finally:
        tmp_path.unlink(missing_ok=True)


def write_error(path: Path, exc: BaseException) -> WriteError:
    """One line: the file that could not be written, why, and the folder's free space."""
    cause = next((e for e in _chain(exc) if isinstance(e, OSError)), None)
    reason = (cause.strerror or brief(cause)) if cause is not None else brief(exc, 1)
    folder = path.parent
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:.1f} MiB free"
    except OSError:
        free = "unknown free space"
    return WriteError(f"{path}: cannot write ({reason}); {folder} has {free}")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and those it was raised from or while handling."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _about(exc: BaseException, paths: tuple[Path, ...]) -> bool:
    """Whether ``exc`` reports a failure to write one of ``paths`` (or an unnamed file)."""
    names = {str(p) for p in paths}
    for error in _chain(exc):
        if isinstance(error, OSError):
            return error.filename is None or str(error.filename) in names
    return False


def _fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to the storage device."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented, strict JSON to ``path`` atomically (NaN/inf become null)."""
    write_text_atomic(path, json.dumps(_finite(obj), indent=2, allow_nan=False) + "\n")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
