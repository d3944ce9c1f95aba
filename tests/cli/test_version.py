"""``cdkd --version`` and ``python -m cdkd``: the version from pyproject.toml, the commit."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

import cdkd
from cdkd.cli import about
from cdkd.version import git_state, package_version, version_line
from tests.factories import run_tool

ROOT = Path(__file__).resolve().parents[2]
tomllib = pytest.importorskip("tomllib")
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def fake_checkout(root: Path, pyproject: str) -> Path:
    """``root/src/cdkd/__init__.py`` under ``root/pyproject.toml``; returns the package folder."""
    package = root / "src" / "cdkd"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('"""stand-in"""\n', encoding="utf-8")
    (root / "pyproject.toml").write_text(pyproject, encoding="utf-8")
    return package


def git(folder: Path, *args: str) -> str:
    command = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-C", str(folder)]
    return subprocess.run([*command, *args], capture_output=True, text=True, check=True).stdout


def test_the_package_version_is_the_pyproject_version() -> None:
    assert cdkd.__version__ == package_version() == PROJECT["version"]


def test_a_checkout_reads_the_version_of_its_project_table(tmp_path: Path) -> None:
    package = fake_checkout(
        tmp_path,
        '[tool.other]\nversion = "1.0"\n\n[project]\nname = "cdkd"\nversion = "9.8.7"\n',
    )
    assert package_version(package) == "9.8.7"


@pytest.mark.parametrize(
    "pyproject",
    [
        '[project]\nname = "other"\nversion = "9.8.7"\n',  # another project's checkout
        '[project]\nname = "cdkd"\ndynamic = ["version"]\n\n[tool.x]\nversion = "9.8.7"\n',
    ],
)
def test_other_pyprojects_and_other_tables_are_not_read(pyproject: str, tmp_path: Path) -> None:
    assert package_version(fake_checkout(tmp_path, pyproject)) != "9.8.7"


def test_version_line_names_the_commit_and_whether_the_checkout_is_modified(
    tmp_path: Path,
) -> None:
    package = fake_checkout(tmp_path, '[project]\nname = "cdkd"\nversion = "2.0.1"\n')
    assert git_state(package) is None
    assert version_line(package) == "cdkd 2.0.1"
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "first")
    commit = git(tmp_path, "rev-parse", "HEAD").strip()
    assert git_state(package) == {"commit": commit, "dirty": False}
    assert version_line(package) == f"cdkd 2.0.1 (git {commit[:7]})"
    (package / "__init__.py").write_text('"""changed"""\n', encoding="utf-8")
    assert version_line(package) == f"cdkd 2.0.1 (git {commit[:7]}+dirty)"


def test_a_package_lying_untracked_inside_a_repository_has_no_commit(tmp_path: Path) -> None:
    """A wheel installed into a folder that happens to be inside some git repository."""
    git(tmp_path, "init", "-q")
    (tmp_path / "README").write_text("x\n", encoding="utf-8")
    git(tmp_path, "add", "README")
    git(tmp_path, "commit", "-q", "-m", "first")
    package = tmp_path / "venv" / "site-packages" / "cdkd"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("", encoding="utf-8")
    assert git_state(package) is None


def test_the_tools_listed_are_the_console_scripts() -> None:
    scripts = dict(PROJECT["scripts"])
    assert scripts.pop("cdkd") == "cdkd.cli.about:main"
    assert {tool: f"cdkd.cli.{module}:main" for tool, module in about.TOOLS.items()} == scripts


def test_help_lists_every_tool_with_a_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        about.main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for tool in about.TOOLS:
        line = re.search(rf"^  {re.escape(tool)} +(\S.*)$", help_text, re.M)
        assert line is not None, tool
        assert not line.group(1).startswith("``"), line.group(1)
    about.main([])
    assert capsys.readouterr().out == help_text


def test_python_m_cdkd_version_prints_version_and_commit(tmp_path: Path) -> None:
    out = run_tool("cdkd", "--version", cwd=tmp_path).stdout.strip()
    assert out == version_line()
    assert out.startswith(f"cdkd {PROJECT['version']}")
    state = git_state()
    if state is not None:
        assert f"(git {state['commit'][:7]}" in out


def test_citation_metadata_carry_the_project_version() -> None:
    citation = (ROOT / "CITATION.cff").read_text(encoding="utf-8")
    assert re.search(r"^cff-version: 1\.2\.0$", citation, re.M)
    assert re.search(rf"^version: {re.escape(PROJECT['version'])}$", citation, re.M)
