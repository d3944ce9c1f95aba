"""Console scripts: one per tool, each its ``main``, which runs as the installed script does."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cdkd.data.io import write_mask

ROOT = Path(__file__).resolve().parents[2]


def console_scripts() -> dict[str, str]:
    """``[project.scripts]`` of pyproject.toml."""
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def tools() -> list[str]:
    """The ``python -m cdkd.<tool>`` modules of the package root (not ``python -m cdkd``)."""
    return sorted(
        path.stem
        for path in (ROOT / "src" / "cdkd").glob("*.py")
        if 'if __name__ == "__main__":' in path.read_text() and path.stem != "__main__"
    )


def resolve(target: str) -> Callable[[], Any]:
    """The function a ``module:attr`` entry point names."""
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def run_script(name: str, *args: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run console script ``name`` in this process as its generated wrapper does; the exit code."""
    main = resolve(console_scripts()[name])
    monkeypatch.setattr(sys, "argv", [name, *args])
    with pytest.raises(SystemExit) as exited:
        sys.exit(main())
    return exited.value.code


def test_every_tool_has_a_console_script_running_its_main() -> None:
    scripts = console_scripts()
    names = tools()
    assert "train" in names and "export" in names
    assert sorted(scripts) == sorted(["cdkd", *(f"cdkd-{tool}" for tool in names)])
    assert resolve(scripts["cdkd"]) is importlib.import_module("cdkd.__main__").main
    for tool in names:
        assert resolve(scripts[f"cdkd-{tool}"]) is importlib.import_module(f"cdkd.{tool}").main


def score_folders_of(tmp_path: Path) -> tuple[Path, Path]:
    """Two matching 0/255 masks in ``pred/`` and ``gt/``."""
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        write_mask(tmp_path / "gt" / f"{name}.png", rng.random((16, 16)) < 0.3)
        write_mask(tmp_path / "pred" / f"{name}.png", rng.random((16, 16)) < 0.3)
    return tmp_path / "pred", tmp_path / "gt"


def test_console_script_reads_overrides_from_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pred, gt = score_folders_of(tmp_path)
    out = tmp_path / "score.json"
    args = (f"pred={pred}", f"gt={gt}", f"out={out}")
    code = run_script("cdkd-score", *args, monkeypatch=monkeypatch)
    assert code is None
    assert json.loads(out.read_text())["count"] == 2
    assert "per-image averaged" in capsys.readouterr().out


@pytest.mark.parametrize("override", ["gt=missing", "no_such_key=1"])
def test_console_script_error_is_one_line_and_status_1(
    override: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pred, gt = score_folders_of(tmp_path)
    monkeypatch.chdir(tmp_path)
    args = [f"pred={pred}", f"gt={gt}"] if override.startswith("no_") else [f"pred={pred}"]
    code = run_script("cdkd-score", *args, override, monkeypatch=monkeypatch)
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: ") and err.count("\n") == 1
