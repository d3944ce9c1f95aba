"""One writer per run folder: a lock file that names its holder.

A run folder (a stage's checkpoints and metrics, an evaluation's outputs) is written by one
process at a time. :class:`RunLock` creates ``<folder>/.cdkd.lock`` with ``O_CREAT | O_EXCL``,
which is atomic on local file systems and on the network file systems clusters use (NFSv3
and later, Lustre, GPFS, BeeGFS); it does not rely on ``flock``/``fcntl`` locks, which NFS
may silently ignore. The file records the holder's host, PID, start time and command, so a
second launch stops at once with one line naming the holder.

A lock left behind by a process that died on this host is taken over with a warning. A lock
held from another host cannot be checked from here: the message says which file to delete
if that run is known to be dead.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

from cdkd.errors import CdkdError

log = logging.getLogger(__name__)

LOCK_NAME = ".cdkd.lock"
# A lock file younger than this whose content is not readable yet is being written by the
# process that just created it; an older unreadable one is debris.
_CREATING_S = 10.0


class RunLockError(CdkdError):
    """The run folder is being written by another process."""


@dataclass(frozen=True)
class LockHolder:
    """Who holds a run folder: enough to find the process, and a token to recognise it."""

    host: str
    pid: int
    started: str
    command: str
    token: str

    @classmethod
    def this_process(cls) -> LockHolder:
        """The current process as a holder, with a fresh token."""
        return cls(
            host=socket.gethostname(),
            pid=os.getpid(),
            started=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300],
            token=uuid.uuid4().hex,
        )

    def describe(self) -> str:
        """One phrase naming the holder, for messages."""
        return f"PID {self.pid} on {self.host} since {self.started} ({self.command})"


#: Where launchers put a process's rank: Lightning's own (torchrun, its subprocess launcher,
#: SLURM, LSF) and the node rank, which the first process on a further node alone carries.
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK", "NODE_RANK")


def leads_launch() -> bool:
    """Whether this process is global rank 0 of its launch, as the environment says.

    Asked before a Trainer exists (which would know its rank): every rank of a distributed
    run calls the entry point, and only rank 0 takes the run folder's lock.
    """
    return all(os.environ.get(name, "0").strip() in ("", "0") for name in _RANK_VARIABLES)


def _read_holder(path: Path) -> LockHolder | None:
    """The holder recorded in ``path``; None when the file is gone or not (yet) readable."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return LockHolder(
            host=str(record["host"]),
            pid=int(record["pid"]),
            started=str(record["started"]),
            command=str(record.get("command", "")),
            token=str(record["token"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _alive(pid: int) -> bool:
    """Whether a process with this PID exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


# The folders this process holds: nesting depth, the token written in the lock file, and the
# outermost folder the lock created (None when the folder existed).
_HELD: dict[Path, tuple[int, str, Path | None]] = {}


class RunLock:
    """Exclusive use of one run folder by this process, as a context manager.

    Re-entrant within a process: a pipeline that trains a stage in-process while holding the
    stage's folder does not lock itself out. ``enabled=False`` makes it a no-op (the other
    ranks of a distributed run, whose rank 0 holds the lock). A folder the lock had to create
    goes again on release if nothing was written into it, so a run that stops early leaves
    no trace.
    """

    def __init__(self, folder: str | Path, enabled: bool = True) -> None:
        self.folder = Path(folder).absolute()
        self.path = self.folder / LOCK_NAME
        self.enabled = enabled
        self.holder = LockHolder.this_process()

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the folder, or raise :class:`RunLockError` naming the process that has it."""
        if not self.enabled:
            return
        if self.folder in _HELD:
            depth, token, created = _HELD[self.folder]
            _HELD[self.folder] = depth + 1, token, created
            return
        missing = [p for p in (self.folder, *self.folder.parents) if not p.exists()]
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(50):  # a takeover can race with other processes doing the same
            if self._create():
                _HELD[self.folder] = 1, self.holder.token, missing[-1] if missing else None
                return
            self._check_holder()
        raise RunLockError(f"{self.folder}: could not take the run folder's lock {self.path}")

    def release(self) -> None:
        """Give the folder back; the lock file goes only if it still names this process."""
        if not self.enabled or self.folder not in _HELD:
            return
        depth, token, created = _HELD.pop(self.folder)
        if depth > 1:
            _HELD[self.folder] = depth - 1, token, created
            return
        current = _read_holder(self.path)
        if current is not None and current.token == token:
            self.path.unlink(missing_ok=True)
        if created is not None:
            _remove_empty(self.folder, created)

    def _create(self) -> bool:
        """Create the lock file exclusively; False when it exists already."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except FileNotFoundError:  # another process's release removed the empty folder
            self.folder.mkdir(parents=True, exist_ok=True)
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(asdict(self.holder), fh)
            fh.flush()
            os.fsync(fh.fileno())
        return True

    def _check_holder(self) -> None:
        """Raise unless the existing lock is stale; remove it when it is."""
        holder = _read_holder(self.path)
        if holder is None:
            if not self.path.exists():
                return  # released meanwhile: try again
            if time.time() - _mtime(self.path) < _CREATING_S:
                raise RunLockError(f"{self.folder}: another process is taking this run folder")
            log.warning("%s: unreadable lock file, taking it over", self.path)
        elif holder.host != socket.gethostname() or _alive(holder.pid):
            raise RunLockError(
                f"{self.folder}: in use by {holder.describe()}; wait for it to finish, or "
                f"delete {self.path} if that run is no longer alive"
            )
        else:
            log.warning(
                "%s: taking over the lock of %s, which is no longer running",
                self.folder,
                holder.describe(),
            )
        self._remove_stale(holder)

    def _remove_stale(self, stale: LockHolder | None) -> None:
        """Delete the lock file if it still records ``stale``.

        A guard file makes the check-and-delete exclusive: without it, a process that read
        the stale record could delete the fresh lock another process just created.
        """
        guard = self.path.with_name(f"{LOCK_NAME}.takeover")
        try:
            os.close(os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            if time.time() - _mtime(guard) > _CREATING_S:  # left by a process that died
                guard.unlink(missing_ok=True)
            time.sleep(0.05)
            return
        try:
            current = _read_holder(self.path)
            if (current and current.token) == (stale and stale.token):
                self.path.unlink(missing_ok=True)
        finally:
            guard.unlink(missing_ok=True)


def _remove_empty(folder: Path, top: Path) -> None:
    """Remove ``folder`` and its parents up to ``top`` while they are empty."""
    for path in (folder, *folder.parents):
        try:
            path.rmdir()
        except OSError:  # not empty (something was written), or gone
            return
        if path == top:
            return


def _mtime(path: Path) -> float:
    """Modification time of ``path``; now when it is gone (so it is never stale)."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return time.time()
