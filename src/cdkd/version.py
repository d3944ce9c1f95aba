"""The package's version and the git state of the checkout it runs from.

Imports nothing heavy (no torch), so that ``cdkd --version`` answers at once. The version has
one source, ``version`` in ``pyproject.toml``: a checkout reads that file, an installed
package the metadata it was built with.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent
#: ``version = "..."`` of the ``[project]`` table (the pyproject parsed without a TOML library,
#: which Python 3.10 lacks).
_PROJECT_VERSION = re.compile(r'^\[project\]$(?:(?!^\[).)*?^version\s*=\s*"([^"]+)"', re.M | re.S)


def checkout_pyproject(package_dir: Path = PACKAGE_DIR) -> Path | None:
    """``pyproject.toml`` of the source checkout holding ``package_dir`` (``src/cdkd``), if any."""
    candidate = package_dir.parents[1] / "pyproject.toml"
    if package_dir.parent.name != "src" or not candidate.is_file():
        return None
    text = candidate.read_text(encoding="utf-8")
    return candidate if re.search(r'^name\s*=\s*"cdkd"', text, re.M) else None


def package_version(package_dir: Path = PACKAGE_DIR) -> str:
    """The version of the code in ``package_dir``.

    A checkout's own ``pyproject.toml`` comes first, so that a checkout imported through
    ``PYTHONPATH`` reports its version rather than that of another installed copy; an
    installed package reads its metadata; ``0+unknown`` when neither says.
    """
    pyproject = checkout_pyproject(package_dir)
    if pyproject is not None:
        match = _PROJECT_VERSION.search(pyproject.read_text(encoding="utf-8"))
        if match:
            return match.group(1)
    try:
        return importlib.metadata.version("cdkd")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _git(folder: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10, check=True
    ).stdout


def git_state(package_dir: Path = PACKAGE_DIR) -> dict[str, Any] | None:
    """Commit and dirtiness of the git checkout ``package_dir`` belongs to (None if none).

    A package installed into a folder that merely lies inside some repository does not count:
    the package's files must be tracked by it.
    """
    try:
        top, commit = _git(package_dir, "rev-parse", "--show-toplevel", "HEAD").splitlines()
        if not _git(package_dir, "ls-files", "--", "__init__.py").strip():
            return None
        status = _git(Path(top), "status", "--porcelain", "--untracked-files=no")
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


def version_line(package_dir: Path = PACKAGE_DIR) -> str:
    """``cdkd 0.1.0 (git abc1234)``, ``+dirty`` after a modified checkout's commit."""
    line = f"cdkd {package_version(package_dir)}"
    git = git_state(package_dir)
    if git is not None:
        line += f" (git {git['commit'][:7]}{'+dirty' if git['dirty'] else ''})"
    return line
