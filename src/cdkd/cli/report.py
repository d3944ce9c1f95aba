"""``python -m cdkd.report sweep=DIR``: summarise a lambda sweep (validation metrics per lambda)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig
from rich.console import Console

from cdkd.cli.common import command


@command("report")
def main(cfg: DictConfig) -> None:
    """Print the sweep table and write ``sweep.md`` / ``sweep.json`` into the sweep folder."""
    from cdkd.analysis.sweep import best_run, collect_sweep, sweep_markdown, sweep_table
    from cdkd.files import write_json_atomic, write_text_atomic

    sweep = Path(cfg.sweep)
    rows = collect_sweep(sweep)
    title = f"lambda sweep in {sweep} (per-image averaged, %; best by validation mIoU)"
    best = best_run(rows)
    write_json_atomic(sweep / "sweep.json", {"runs": rows, "best": best})
    write_text_atomic(sweep / "sweep.md", sweep_markdown(rows, title))
    Console().print(sweep_table(rows, title))
    Console().print(f"written: {sweep / 'sweep.md'}, {sweep / 'sweep.json'}")
