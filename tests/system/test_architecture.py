"""The package keeps its shape: layers import downwards, run-folder paths have one owner."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "cdkd"
# Entry points above cli/: `python -m cdkd.<tool>` imports the tool's cli module.
SHIMS = {
    "__main__",
    "analyze",
    "eval",
    "export",
    "import",
    "pipeline",
    "predict",
    "report",
    "score",
    "train",
    "weights",
}
MAX_LINES = 400


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def imported(path: Path) -> set[str]:
    """Every ``cdkd`` module a file imports, at any depth (lazy imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {name for name in names if name == "cdkd" or name.startswith("cdkd.")}


def package_of(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [("data", "cdkd.training"), ("inference", "cdkd.training"), ("data", "cdkd.inference")],
)
def test_lower_layers_do_not_import_higher_ones(layer: str, forbidden: str) -> None:
    offenders = [
        f"{path.relative_to(PACKAGE)} imports {name}"
        for path in (PACKAGE / layer).rglob("*.py")
        for name in imported(path)
        if name == forbidden or name.startswith(f"{forbidden}.")
    ]
    assert offenders == []


def test_only_cli_and_the_entry_shims_import_cli() -> None:
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in modules()
        if package_of(path) not in {"cli", *SHIMS}
        and any(name.startswith("cdkd.cli") for name in imported(path))
    ]
    assert offenders == []


def test_modules_stay_readable_in_size() -> None:
    """Model files hold whole networks and may be longer; every other module stays small."""
    long = {
        str(path.relative_to(PACKAGE)): n
        for path in modules()
        if "zoo" not in path.parts
        and (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES + 10
    }
    assert long == {}


# Fragments of run-folder paths: only the run layout may spell them.
PATH_FRAGMENT = re.compile(r"best\.ckpt|last\.ckpt|lambda_[${]|[/\"']eval/")


def test_run_folder_paths_are_spelled_only_by_the_layout() -> None:
    files = [*PACKAGE.rglob("*.py"), *(ROOT / "conf").rglob("*.yaml")]
    owner = PACKAGE / "runs" / "layout.py"
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in files
        if path != owner
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if PATH_FRAGMENT.search(line)
    ]
    assert offenders == []
