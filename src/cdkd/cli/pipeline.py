"""``python -m cdkd.pipeline [key=value ...]``: the whole O-P / MTKD method for one model.

Runs, in order and skipping every step whose outputs already exist: the baseline M_O, the
CAR-partition teachers, the evaluation of the original model and of O-P inference, one
student per value of ``distill.lambdas`` (scored on validation only), the choice of lambda by
validation per-image mIoU (the run layout's selection file), and the test evaluation of the
selected student; then writes the paper's Table III block for the model, with the
lambda-vs-validation table, to the run layout's results files (``.md`` and ``.json``).

Every argument is a Hydra override passed on to the stages (``model=changer_b1 data=jl1cd
partition=two trainer.devices=2``); overrides that only concern training are not passed to
the evaluations. Each step runs the same command a user would (``python -m cdkd.train`` /
``cdkd.eval``) in its own process, which locks its own run folder; with ``--in-process``
(the first argument) the steps run in the pipeline's process instead, on the same
configurations, which saves a start of Python, torch and Lightning per step (on small data
most of a step's time) at the cost of isolation. The pipeline itself holds
the lock of the students' folder (where the selection goes; the results file of the model
and partition is written by the pipeline alone) from start to end, so a second pipeline for
the same model and partition stops at once with one line naming the first.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.markup import escape

from cdkd.analysis.compare import Strategy
from cdkd.cli.common import config_error_message
from cdkd.config import config_dir
from cdkd.errors import CdkdError, ConfigError
from cdkd.files import write_json_atomic, write_text_atomic
from cdkd.runs.layout import RunFolder, RunLayout
from cdkd.runs.lock import RunLock

#: The first argument that runs every step in the pipeline's own process.
IN_PROCESS = "--in-process"

#: Table III rows: the strategy's label and the evaluation that produces it.
STRATEGY_ROWS: tuple[tuple[str, Strategy], ...] = (
    ("-", "original"),
    ("O-P", "op"),
    ("MTKD", "mtkd"),
)


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


def override_key(item: str) -> str:
    """The key an override sets (``+distill.lambda=1`` -> ``distill.lambda``)."""
    return item.lstrip("+~").split("=", 1)[0]


def eval_overrides(overrides: list[str]) -> list[str]:
    """The overrides that also apply to evaluation (data, model, partition, paths, ...)."""
    base = compose_config("eval", [])
    groups = {"data", "model", "partition", "distill", "paths", "experiment"}
    kept = []
    for item in overrides:
        key = override_key(item).split(".", 1)[0]
        if key in groups or key in base:
            kept.append(item)
    return kept


def lambda_grid(train_cfg: DictConfig) -> list[float]:
    """``distill.lambdas`` as distinct numbers >= 0, in increasing order (one line if not)."""
    values = train_cfg.distill.lambdas
    if not OmegaConf.is_list(values) or len(values) == 0:
        raise ConfigError(f"distill.lambdas = {values!r} must be a non-empty list of numbers")
    try:
        grid = [float(value) for value in values]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"distill.lambdas = {list(values)}: not all numbers") from exc
    if min(grid) < 0 or len(set(grid)) != len(grid):
        raise ConfigError(f"distill.lambdas = {grid}: values must be distinct and >= 0")
    return sorted(grid)


@dataclass(frozen=True)
class Plan:
    """The ordered steps, the student grid and where each strategy's metrics land.

    ``steps`` run first; then lambda is chosen among ``students`` (lambda -> run folder) and
    written to ``selection``; then ``mtkd`` evaluates the chosen student on test.
    """

    steps: list[Step]
    students: dict[float, Path]
    selection: Path
    mtkd: Step
    baseline: Path
    metrics: dict[str, Path]
    eval_cfg: DictConfig


def plan(overrides: list[str]) -> Plan:
    """The pipeline's steps for ``overrides``."""
    if any(override_key(item) == "distill.lambda" for item in overrides):
        raise ConfigError(
            "distill.lambda: the pipeline trains one student per value of distill.lambdas and "
            "selects on validation; give distill.lambdas=[VALUE] for a single lambda"
        )
    if any(override_key(item) == "seed" for item in overrides):
        raise ConfigError(
            "seed: the pipeline chains the runs of the default seed (the students start from "
            "its baseline and teachers, the evaluations read them); train other seeds stage "
            "by stage with python -m cdkd.train seed=N"
        )
    train_cfg = compose_config("train", overrides)
    grid = lambda_grid(train_cfg)
    for_eval = eval_overrides(overrides)
    stages = ["baseline", *train_cfg.partition.teacher_stages.values()]
    steps = []
    for stage in stages:
        stage_overrides = [*overrides, f"stage={stage}"]
        run = RunFolder(Path(compose_config("train", stage_overrides).run_dir))
        steps.append(Step("cdkd.train", tuple(stage_overrides), run.metrics))
    evals = {}
    for _, strategy in STRATEGY_ROWS:
        eval_list = [*for_eval, f"strategy={strategy}"]
        evals[strategy] = Step(
            "cdkd.eval",
            tuple(eval_list),
            RunFolder(Path(compose_config("eval", eval_list).out_dir)).metrics,
        )
    steps += [evals["original"], evals["op"]]
    students = {}
    for lam in grid:
        # Selection must never see test: the students are scored on validation only.
        student = [*overrides, "stage=student", f"distill.lambda={lam!r}", "test_after_fit=false"]
        students[lam] = Path(compose_config("train", student).run_dir)
        steps.append(Step("cdkd.train", tuple(student), RunFolder(students[lam]).metrics))
    eval_cfg = compose_config("eval", for_eval)
    return Plan(
        steps=steps,
        students=students,
        selection=Path(eval_cfg.selection),
        mtkd=evals["mtkd"],
        baseline=steps[0].output.parent,
        metrics={strategy: step.output for strategy, step in evals.items()},
        eval_cfg=eval_cfg,
    )


def run_in_process(step: Step) -> None:
    """Run ``step`` in this process: what its command runs, on the configuration it composes."""
    from cdkd.cli.eval import evaluate_checked
    from cdkd.training.run import train

    if step.tool == "cdkd.train":
        train(compose_config("train", list(step.overrides)))
    elif step.tool == "cdkd.eval":
        evaluate_checked(compose_config("eval", list(step.overrides)))
    else:
        raise CdkdError(f"no in-process runner for {step.tool}")


def run_step(step: Step, console: Console, redo: str = "", in_process: bool = False) -> None:
    """Run one step (in its own process unless ``in_process``) unless its output already
    exists (or ``redo`` says why it must run again)."""
    command = escape(step.describe())  # overrides such as [a,b] are not markup
    if step.output.is_file() and not redo:
        console.print(f"[dim]skip (done): {command}[/dim]", soft_wrap=True)
        return
    reason = f" ({redo})" if redo else ""
    console.print(f"[bold]run:[/bold] {command}{reason}", soft_wrap=True)
    if in_process:
        run_in_process(step)
    else:
        proc = subprocess.run([sys.executable, "-m", step.tool, *step.overrides], check=False)
        if proc.returncode != 0:
            raise CdkdError(f"step failed (exit {proc.returncode}): {step.describe()}")
    if not step.output.is_file():
        raise CdkdError(f"step finished without writing {step.output}: {step.describe()}")


def select(pipeline: Plan) -> dict[str, Any]:
    """Choose lambda among the finished students and record it in the selection file."""
    from cdkd.analysis.sweep import select_lambda

    selection = select_lambda(pipeline.students)
    write_json_atomic(pipeline.selection, selection)
    return selection


def evaluated_other_student(metrics_file: Path, selection: dict[str, Any]) -> bool:
    """Whether an existing MTKD evaluation scored another checkpoint than the selected one."""
    if not metrics_file.is_file():
        return False
    try:
        recorded = Path(json.loads(metrics_file.read_text())["checkpoint"])
    except (ValueError, KeyError, TypeError):
        return True
    return recorded.resolve() != RunFolder(Path(selection["selected"]["run"])).best.resolve()


def table_iii_results(pipeline: Plan, selection: dict[str, Any]) -> dict[str, Any]:
    """Table III block of the model (per-image averaged) from the evaluations' metrics.

    The MTKD row is the selected student's; ``lambda_selection`` holds the grid with each
    student's validation metrics, M_O's for comparison, and the rule.
    """
    from cdkd.analysis.sweep import validation_metrics

    eval_cfg = pipeline.eval_cfg
    details = {
        label: json.loads(pipeline.metrics[strategy].read_text())
        for label, strategy in STRATEGY_ROWS
    }
    return {
        "model": eval_cfg.model.name,
        "data": eval_cfg.data.name,
        "partition": eval_cfg.partition.name,
        "lambda": selection["selected"]["lambda"],
        "split": "test",
        "averaging": "per-image",
        "rows": {
            label: {k: v for k, v in d["per_image"].items() if k.startswith("m")}
            for label, d in details.items()
        },
        "routing": details["O-P"].get("routing"),
        "pooled": {label: d["pooled"] for label, d in details.items()},
        "lambda_selection": {
            **selection,
            "baseline_val": validation_metrics(pipeline.baseline),
            "file": str(pipeline.selection),
        },
    }


def titles(results: dict[str, Any]) -> tuple[str, str]:
    """Titles of the test Table III block and of the lambda-vs-validation table."""
    test = (
        f"{results['model']} on {results['data']} test ({results['partition']} teachers, "
        f"lambda={results['lambda']:g} selected on validation; per-image averaged, %)"
    )
    val = (
        f"{results['model']} on {results['data']} validation: M_O and the student at each "
        "lambda (per-image averaged, %)"
    )
    return test, val


def write_results(results: dict[str, Any], eval_cfg: DictConfig) -> Path:
    """Write the model's results (``.json`` and ``.md``) where the run layout keeps them."""
    from cdkd.analysis.sweep import selection_markdown
    from cdkd.analysis.tables import strategy_markdown

    stem = RunLayout.from_config(eval_cfg).results
    test_title, val_title = titles(results)
    selection = results["lambda_selection"]
    markdown = strategy_markdown(results["rows"], test_title) + "\n"
    markdown += selection_markdown(selection, selection["baseline_val"], val_title)
    write_json_atomic(stem.with_suffix(".json"), results)
    write_text_atomic(stem.with_suffix(".md"), markdown)
    return stem


def run_pipeline(
    pipeline: Plan, console: Console, in_process: bool = False
) -> tuple[dict[str, Any], Path]:
    """Run the steps, select lambda, evaluate the selected student; the results and their stem."""
    for step in pipeline.steps:
        run_step(step, console, in_process=in_process)
    selection = select(pipeline)
    console.print(
        f"lambda={selection['selected']['lambda']:g} selected on validation "
        f"({selection['rule']}): {escape(str(pipeline.selection))}",
        soft_wrap=True,
    )
    stale = evaluated_other_student(pipeline.mtkd.output, selection)
    redo = "the selected student changed" if stale else ""
    run_step(pipeline.mtkd, console, redo, in_process)
    results = table_iii_results(pipeline, selection)
    return results, write_results(results, pipeline.eval_cfg)


def main(argv: list[str] | None = None) -> None:
    """Run the pipeline for the overrides in ``argv`` and print the Table III block."""
    from rich.columns import Columns

    from cdkd.analysis.sweep import selection_table
    from cdkd.analysis.tables import strategy_table

    overrides = list(sys.argv[1:] if argv is None else argv)
    in_process = overrides[:1] == [IN_PROCESS]
    overrides = overrides[1:] if in_process else overrides
    console = Console()
    try:
        pipeline = plan(overrides)
        with RunLock(pipeline.selection.parent):
            results, stem = run_pipeline(pipeline, console, in_process)
    except CdkdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    test_title, val_title = titles(results)
    val = results["lambda_selection"]
    console.print(
        Columns(
            [
                strategy_table(results["rows"], test_title),
                selection_table(val, val["baseline_val"], val_title),
            ]
        )
    )
    console.print(f"results written to {stem}.md and {stem}.json")
