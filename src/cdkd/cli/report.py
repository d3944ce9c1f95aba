"""``python -m cdkd.report [key=value ...] [sweep=DIR]``: summarise a lambda sweep.

The students' folder is found by the run-folder convention of every other tool: the
training configuration is composed with the same overrides as the sweep (``model=X data=Y
partition=two paths.runs_dir=...``; training-only overrides are accepted too) and the folder
is the parent of the student's run folder, ``<runs>/<data>/<model>/student<suffix>``.
``sweep=DIR`` names the folder instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console

from cdkd.errors import CdkdError


def sweep_folder(overrides: list[str]) -> Path:
    """The folder holding one student run per lambda for ``overrides``."""
    from cdkd.cli.pipeline import compose_config

    explicit = [item.split("=", 1)[1] for item in overrides if item.startswith("sweep=")]
    rest = [item for item in overrides if not item.startswith("sweep=")]
    run_dir = Path(compose_config("train", [*rest, "stage=student"]).run_dir)
    return Path(explicit[-1]) if explicit else run_dir.parent


def main(argv: list[str] | None = None) -> None:
    """Print the sweep table and write ``sweep.md`` / ``sweep.json`` into the sweep folder."""
    from cdkd.analysis.sweep import best_run, collect_sweep, sweep_markdown, sweep_table
    from cdkd.files import write_json_atomic, write_text_atomic

    overrides = list(sys.argv[1:] if argv is None else argv)
    try:
        sweep = sweep_folder(overrides)
        rows = collect_sweep(sweep)
        title = f"lambda sweep in {sweep} (per-image averaged, %; best by validation mIoU)"
        best = best_run(rows)
        write_json_atomic(sweep / "sweep.json", {"runs": rows, "best": best})
        write_text_atomic(sweep / "sweep.md", sweep_markdown(rows, title))
    except CdkdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    Console().print(sweep_table(rows, title))
    Console().print(f"written: {sweep / 'sweep.md'}, {sweep / 'sweep.json'}")
