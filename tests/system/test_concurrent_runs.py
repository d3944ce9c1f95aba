"""Two ``cdkd.train`` processes on one run folder: the second stops at once naming the first,
which finishes undisturbed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cdkd.runs.lock import LOCK_NAME
from tests.factories import Composer


@pytest.mark.slow  # two tool start-ups and a smoke run: 20 s idle, a minute on a busy machine
def test_a_second_training_on_a_busy_run_folder_stops_naming_the_first(
    tmp_path: Path, compose_config: Composer
) -> None:
    from cdkd.data.config import datamodule_from_config

    datamodule_from_config(compose_config("train", "experiment=smoke")).prepare_data()
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "cdkd.train",
        "experiment=smoke",
        "model=fc_ef",
        "logger=none",
        "test_after_fit=false",
        f"paths.data_dir={tmp_path / 'data'}",
        f"run_dir={run_dir}",
    ]
    first = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    lock = run_dir / LOCK_NAME
    deadline = time.monotonic() + 120
    while not lock.exists():
        if first.poll() is not None or time.monotonic() > deadline:
            first.kill()
            pytest.fail(f"{lock} never appeared: {first.communicate()[1][-2000:]}")
        time.sleep(0.02)

    # The smoke run is shorter than a start-up: pause it while the second one starts.
    os.kill(first.pid, signal.SIGSTOP)
    started = time.monotonic()
    try:
        second = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    # Refused once started (imports, composition), long before the first could finish.
    assert time.monotonic() - started < 60
    err = second.stderr.strip()
    assert second.returncode == 1 and len(err.splitlines()) == 1, err
    assert f"in use by PID {first.pid} on {socket.gethostname()} " in err, err

    err = first.communicate(timeout=300)[1]
    assert first.returncode == 0, err[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["val"]["count"] == 12
    assert not lock.exists()
