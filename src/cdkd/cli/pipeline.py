"""``python -m cdkd.pipeline [key=value ...]``: the whole O-P / MTKD method for one model.

Runs, in order and skipping every step whose outputs already exist: the baseline M_O, the
CAR-partition teachers, the evaluation of the original model and of O-P inference, the
student, and the student's evaluation; then writes the paper's Table III block for the model
to ``<runs>/<data>/<model>/results<suffix>.md`` and ``.json``.

Every argument is a Hydra override passed on to the stages (``model=changer_b1 data=jl1cd
partition=two trainer.devices=2``); overrides that only concern training are not passed to
the evaluations. Each step runs the same command a user would (``python -m cdkd.train`` /
``cdkd.eval``) in its own process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from rich.console import Console

from cdkd.cli.common import config_dir, config_error_message
from cdkd.errors import CdkdError, ConfigError
from cdkd.files import write_json_atomic, write_text_atomic

#: Table III rows: the strategy's label and the evaluation that produces it.
STRATEGY_ROWS = (("-", "original"), ("O-P", "op"), ("MTKD", "mtkd"))


@dataclass(frozen=True)
class Step:
    """One command of the pipeline and the file whose existence marks it done."""

    tool: str
    overrides: tuple[str, ...]
    output: Path

    def describe(self) -> str:
        """The command line, as a user would type it."""
        return f"python -m {self.tool} {' '.join(self.overrides)}".strip()


def compose_config(name: str, overrides: list[str]) -> DictConfig:
    """Compose ``conf/<name>.yaml`` with ``overrides``, turning Hydra errors into one line."""
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        try:
            return compose(config_name=name, overrides=overrides)
        except Exception as exc:  # Hydra's and OmegaConf's errors, several kinds
            message = config_error_message(exc)
            raise ConfigError(f"{name} config with {overrides}: {message}") from exc


def eval_overrides(overrides: list[str]) -> list[str]:
    """The overrides that also apply to evaluation (data, model, partition, paths, ...)."""
    base = compose_config("eval", [])
    groups = {"data", "model", "partition", "distill", "paths", "experiment"}
    kept = []
    for item in overrides:
        key = item.lstrip("+~").split("=", 1)[0].split(".", 1)[0]
        if key in groups or key in base:
            kept.append(item)
    return kept


@dataclass(frozen=True)
class Plan:
    """The ordered steps, where each strategy's metrics land, and the evaluation config."""

    steps: list[Step]
    metrics: dict[str, Path]
    eval_cfg: DictConfig


def plan(overrides: list[str]) -> Plan:
    """The pipeline's steps for ``overrides``."""
    train_cfg = compose_config("train", overrides)
    for_eval = eval_overrides(overrides)
    stages = ["baseline", *train_cfg.partition.teacher_stages.values()]
    steps = []
    for stage in stages:
        stage_overrides = [*overrides, f"stage={stage}"]
        run_dir = Path(compose_config("train", stage_overrides).run_dir)
        steps.append(Step("cdkd.train", tuple(stage_overrides), run_dir / "metrics.json"))
    evals = {}
    for _, strategy in STRATEGY_ROWS:
        eval_list = [*for_eval, f"strategy={strategy}"]
        evals[strategy] = Step(
            "cdkd.eval",
            tuple(eval_list),
            Path(compose_config("eval", eval_list).out_dir) / "metrics.json",
        )
    student_overrides = [*overrides, "stage=student"]
    student_dir = Path(compose_config("train", student_overrides).run_dir)
    steps += [evals["original"], evals["op"]]
    steps.append(Step("cdkd.train", tuple(student_overrides), student_dir / "metrics.json"))
    steps.append(evals["mtkd"])
    metrics = {strategy: step.output for strategy, step in evals.items()}
    return Plan(steps, metrics, compose_config("eval", for_eval))


def run_step(step: Step, console: Console) -> None:
    """Run one step in its own process unless its output already exists."""
    if step.output.is_file():
        console.print(f"[dim]skip (done): {step.describe()}[/dim]")
        return
    console.print(f"[bold]run:[/bold] {step.describe()}")
    proc = subprocess.run([sys.executable, "-m", step.tool, *step.overrides], check=False)
    if proc.returncode != 0:
        raise CdkdError(f"step failed (exit {proc.returncode}): {step.describe()}")
    if not step.output.is_file():
        raise CdkdError(f"step finished without writing {step.output}: {step.describe()}")


def collect_results(pipeline: Plan) -> dict[str, Any]:
    """Table III block of the model (per-image averaged) from the evaluations' metrics."""
    eval_cfg = pipeline.eval_cfg
    details = {
        label: json.loads(pipeline.metrics[strategy].read_text())
        for label, strategy in STRATEGY_ROWS
    }
    return {
        "model": eval_cfg.model.name,
        "data": eval_cfg.data.name,
        "partition": eval_cfg.partition.name,
        "lambda": float(eval_cfg.distill["lambda"]),
        "split": "test",
        "averaging": "per-image",
        "rows": {
            label: {k: v for k, v in d["per_image"].items() if k.startswith("m")}
            for label, d in details.items()
        },
        "routing": details["O-P"].get("routing"),
        "pooled": {label: d["pooled"] for label, d in details.items()},
    }


def write_results(results: dict[str, Any], eval_cfg: DictConfig) -> tuple[Path, str]:
    """Write ``results<suffix>.json`` and ``.md`` next to the model's runs."""
    from cdkd.analysis.tables import strategy_markdown

    stem = Path(eval_cfg.model_dir) / f"results{eval_cfg.partition.run_suffix}"
    title = (
        f"{results['model']} on {results['data']} test "
        f"({results['partition']} teachers, lambda={results['lambda']:g}; per-image averaged, %)"
    )
    markdown = strategy_markdown(results["rows"], title)
    write_json_atomic(stem.with_suffix(".json"), results)
    write_text_atomic(stem.with_suffix(".md"), markdown)
    return stem, title


def main(argv: list[str] | None = None) -> None:
    """Run the pipeline for the overrides in ``argv`` and print the Table III block."""
    from cdkd.analysis.tables import strategy_table

    overrides = list(sys.argv[1:] if argv is None else argv)
    console = Console()
    try:
        pipeline = plan(overrides)
        for step in pipeline.steps:
            run_step(step, console)
        results = collect_results(pipeline)
        stem, title = write_results(results, pipeline.eval_cfg)
    except CdkdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    console.print(strategy_table(results["rows"], title))
    console.print(f"results written to {stem}.md and {stem}.json")
