"""``cdkd`` (also ``python -m cdkd``): the version, and the tools the package installs.

``cdkd --version`` prints ``cdkd 0.1.0 (git abc1234)`` (the commit only when the package runs
from a git checkout, ``+dirty`` when that checkout has changes); ``cdkd --help`` lists the tools
with one line each. Nothing heavy is imported: each tool's line is read from its module's
docstring without importing the module.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import re
from collections.abc import Sequence
from pathlib import Path

from cdkd.version import version_line

#: Each tool: console script and its module under ``cdkd.cli`` (``python -m cdkd.<name>``).
TOOLS: dict[str, str] = {
    "cdkd-train": "train",
    "cdkd-eval": "eval",
    "cdkd-pipeline": "pipeline",
    "cdkd-report": "report",
    "cdkd-analyze": "analyze",
    "cdkd-predict": "predict",
    "cdkd-score": "score",
    "cdkd-export": "export",
    "cdkd-weights": "weights",
    "cdkd-import": "import_ckpt",
}


def summary(module: str) -> str:
    """The first sentence of ``cdkd.cli.<module>``'s docstring, without its usage prefix."""
    spec = importlib.util.find_spec(f"cdkd.cli.{module}")
    if spec is None or spec.origin is None:
        return ""
    doc = ast.get_docstring(ast.parse(Path(spec.origin).read_text(encoding="utf-8"))) or ""
    first = " ".join(doc.split("\n\n")[0].split())
    first = re.sub(r"^``[^`]*``:\s*", "", first)
    sentence = re.split(r"(?<=\.)\s", first, maxsplit=1)[0].rstrip(".")
    return sentence[:1].lower() + sentence[1:] if sentence[1:2].islower() else sentence


def tools_text() -> str:
    """One line per tool: its console script, its ``python -m`` name and what it does."""
    width = max(map(len, TOOLS))
    lines = ["tools (each also runs as python -m cdkd.<name>; <tool> --help for its options):"]
    lines += [f"  {tool:<{width}}  {summary(module)}" for tool, module in TOOLS.items()]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    """``cdkd [--version] [--help]``."""
    result = argparse.ArgumentParser(
        prog="cdkd",
        description="Change detection with CAR-partitioned multi-teacher knowledge distillation.",
        epilog=tools_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    result.add_argument("--version", action="store_true", help="print the version and exit")
    return result


def main(argv: Sequence[str] | None = None) -> None:
    """Print the version (``--version``), else the help with the list of tools."""
    command = parser()
    if command.parse_args(argv).version:
        print(version_line())
    else:
        command.print_help()
