"""``python -m cdkd.report [key=value ...] [sweep=DIR]``: summarise a lambda sweep.

The students' folder is found by the run-folder convention of every other tool: the
training configuration is composed with the same overrides as the sweep (``model=X data=Y
partition=two paths.runs_dir=...``; training-only overrides are accepted too) and the folder
is the parent of the student's run folder, ``<runs>/<data>/<model>/student<suffix>``.
``sweep=DIR`` names the folder instead. Only the runs of the configured ``seed`` (default 42)
are listed: the runs of other seeds in the folder (``lambda_<lambda>-seed<N>/``) are a
separate sweep, ``seed=N``.

The report is written under the folder's run lock: while a pipeline of the same model runs
(it holds that lock from start to end) the report stops with the lock's one line.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console

from cdkd.errors import CdkdError


def sweep_folder(overrides: list[str]) -> tuple[Path, int]:
    """The folder holding one student run per lambda for ``overrides``, and their seed."""
    from cdkd.cli.pipeline import compose_config

    explicit = [item.split("=", 1)[1] for item in overrides if item.startswith("sweep=")]
    rest = [item for item in overrides if not item.startswith("sweep=")]
    cfg = compose_config("train", [*rest, "stage=student"])
    # The student root is the parent of every seed's run folder (lambda_<lambda>[-seed<N>]).
    folder = Path(explicit[-1]) if explicit else Path(cfg.run_dir).parent
    return folder, int(cfg.seed)


def main(argv: list[str] | None = None) -> None:
    """Print the sweep table and write ``sweep.md`` / ``sweep.json`` into the sweep folder."""
    from cdkd.analysis.sweep import best_run, collect_sweep, sweep_markdown, sweep_table
    from cdkd.files import write_json_atomic, write_text_atomic
    from cdkd.runs.lock import RunLock

    overrides = list(sys.argv[1:] if argv is None else argv)
    try:
        sweep, seed = sweep_folder(overrides)
        rows = collect_sweep(sweep, seed)
        title = (
            f"lambda sweep in {sweep}, seed {seed} (per-image averaged, %; best by validation mIoU)"
        )
        best = best_run(rows)
        with RunLock(sweep):
            write_json_atomic(sweep / "sweep.json", {"seed": seed, "runs": rows, "best": best})
            write_text_atomic(sweep / "sweep.md", sweep_markdown(rows, title))
    except CdkdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    Console().print(sweep_table(rows, title))
    Console().print(f"written: {sweep / 'sweep.md'}, {sweep / 'sweep.json'}")
