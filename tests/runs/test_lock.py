"""The run-folder lock: one writer per folder, a clear line naming the holder, stale takeover."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cdkd.runs.lock import LOCK_NAME, RunLock, RunLockError, leads_launch


def write_lock(folder: Path, host: str, pid: int, token: str = "t0") -> Path:
    """A lock file as another process would have left it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    record = {"host": host, "pid": pid, "started": "2026-01-01T00:00:00+00:00"}
    path.write_text(json.dumps({**record, "command": "cdkd.train", "token": token}))
    return path


def dead_pid() -> int:
    """The PID of a process that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_lock_records_its_holder_and_goes_on_release(tmp_path: Path) -> None:
    with RunLock(tmp_path / "run") as lock:
        record = json.loads(lock.path.read_text())
        assert record["host"] == socket.gethostname() and record["pid"] == os.getpid()
        assert record["started"].endswith("+00:00") and record["token"]
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def test_a_second_process_is_refused_with_one_line_naming_the_holder(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from cdkd.runs.lock import RunLock\n"
            f"with RunLock({str(folder)!r}):\n    print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockError) as err:
            RunLock(folder).acquire()
        message = str(err.value)
        assert len(message.splitlines()) == 1
        assert f"PID {holder.pid} on {socket.gethostname()}" in message
        assert str(folder) in message and LOCK_NAME in message
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_dead_process_on_this_host_is_taken_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pid = dead_pid()
    write_lock(tmp_path, socket.gethostname(), pid)
    with caplog.at_level(logging.WARNING), RunLock(tmp_path) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert f"PID {pid}" in caplog.text and "no longer running" in caplog.text


def test_a_lock_held_from_another_host_is_never_taken_over(tmp_path: Path) -> None:
    path = write_lock(tmp_path, "other-node", dead_pid())
    with pytest.raises(RunLockError, match=r"on other-node since .*delete .*if that run"):
        RunLock(tmp_path).acquire()
    assert json.loads(path.read_text())["host"] == "other-node"


def test_an_unreadable_lock_is_respected_while_fresh_and_taken_over_when_old(
    tmp_path: Path,
) -> None:
    path = tmp_path / LOCK_NAME
    path.write_text("")  # another process created it a moment ago and is writing it
    with pytest.raises(RunLockError, match="another process is taking"):
        RunLock(tmp_path).acquire()
    old = time.time() - 3600
    os.utime(path, (old, old))
    with RunLock(tmp_path) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()


def test_the_lock_is_reentrant_within_a_process(tmp_path: Path) -> None:
    with RunLock(tmp_path) as outer:
        with RunLock(tmp_path):
            pass
        assert outer.path.exists()  # the inner release keeps the outer hold
    assert not outer.path.exists()


def test_release_leaves_a_lock_file_that_names_another_holder(tmp_path: Path) -> None:
    lock = RunLock(tmp_path)
    lock.acquire()
    write_lock(tmp_path, "other-node", 1, token="someone-else")
    lock.release()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["token"] == "someone-else"


def test_a_disabled_lock_writes_nothing(tmp_path: Path) -> None:
    write_lock(tmp_path, "other-node", 1)
    with RunLock(tmp_path, enabled=False):
        pass
    assert json.loads((tmp_path / LOCK_NAME).read_text())["host"] == "other-node"


def _race(folder: str, start: float, queue: Any, done: Any) -> None:
    time.sleep(max(0.0, start - time.time()))
    try:
        RunLock(folder).acquire()
    except RunLockError:
        queue.put("refused")
        return
    queue.put("won")
    done.wait(30)  # hold the folder until every racer has tried


def test_racing_takeovers_of_a_stale_lock_leave_exactly_one_holder(tmp_path: Path) -> None:
    write_lock(tmp_path, socket.gethostname(), dead_pid())
    context = multiprocessing.get_context("spawn")
    queue, done = context.Queue(), context.Event()
    start = time.time() + 1.5
    args = (str(tmp_path), start, queue, done)
    procs = [context.Process(target=_race, args=args) for _ in range(4)]
    for proc in procs:
        proc.start()
    outcomes = sorted(queue.get(timeout=60) for _ in procs)
    done.set()
    for proc in procs:
        proc.join(30)
    assert outcomes == ["refused", "refused", "refused", "won"]


def test_a_folder_the_lock_created_goes_again_when_nothing_was_written(tmp_path: Path) -> None:
    with RunLock(tmp_path / "eval" / "op" / "test"):
        pass
    assert list(tmp_path.iterdir()) == []  # nor the parents it had to create
    with RunLock(tmp_path / "run") as lock:
        (lock.folder / "metrics.json").write_text("{}")
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["metrics.json"]
    (tmp_path / "kept").mkdir()
    with RunLock(tmp_path / "kept"):
        pass
    assert (tmp_path / "kept").is_dir()  # it existed before: not the lock's to remove


@pytest.mark.parametrize(
    ("environment", "leads"),
    [
        ({}, True),
        ({"RANK": "0", "LOCAL_RANK": "0", "NODE_RANK": "0"}, True),
        ({"LOCAL_RANK": "1"}, False),  # a process of Lightning's DDP launcher
        ({"RANK": "3"}, False),  # torchrun
        ({"SLURM_PROCID": "2"}, False),
        ({"NODE_RANK": "1"}, False),  # the first process of a further node
    ],
)
def test_only_rank_zero_of_a_launch_takes_locks(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], leads: bool
) -> None:
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert leads_launch() is leads
