"""``python -m cdkd.eval``: evaluate a strategy (original, O-P or MTKD) on a data split.

Prints a table and writes ``metrics.json`` (the schema of ``cdkd.score``), ``per_image.csv``
(name, CAR, per-image metrics) and optionally the 0/255 prediction PNGs into ``out_dir``.
For O-P it also reports the routing confusion (ground-truth vs predicted CAR bucket).
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from cdkd.analysis.compare import STRATEGIES
from cdkd.cli.common import command
from cdkd.errors import ConfigError
from cdkd.runs.layout import teacher_checkpoints
from cdkd.runs.lock import RunLock


def check_checkpoints(cfg: DictConfig, paths: list[Any]) -> None:
    """Refuse checkpoints trained with other partition thresholds or data normalisation.

    ``force=true`` skips the check (the checkpoints are still read and their model checked).
    Checkpoints of other projects record no setup and are not checked.
    """
    from cdkd.models.checkpoint import is_cdkd_checkpoint
    from cdkd.runs.meta import read_meta

    if cfg.force:
        return
    thresholds = list(cfg.partition.thresholds)
    for path in paths:
        if is_cdkd_checkpoint(path):
            read_meta(path).check_evaluation(path, thresholds, cfg.data.mean, cfg.data.std)


def build_origin_partition(cfg: DictConfig) -> Any:
    """M_O and the partition teachers of ``cfg`` as one O-P model."""
    from cdkd.inference.origin_partition import OriginPartition
    from cdkd.models.checkpoint import load_network
    from cdkd.partition import PartitionScheme
    from cdkd.training.checkpoints import load_teacher

    scheme = PartitionScheme.from_config(cfg.partition)
    paths = teacher_checkpoints(cfg)
    origin = load_network(cfg.distill.init, expected_model=cfg.model.name)
    teacher_model = cfg.distill.teacher_model
    teachers = [load_teacher(paths[b], teacher_model, scheme, b) for b in scheme.buckets]
    return OriginPartition(origin, teachers, scheme)


def student_lambda(cfg: DictConfig) -> tuple[float, str]:
    """The lambda whose student strategy=mtkd evaluates, and where it came from.

    ``distill.lambda`` when given; otherwise the pipeline's selection decides and ``cfg`` is
    set to its lambda, so the checkpoint is that student's in the run layout.
    """
    from cdkd.analysis.sweep import selected_lambda

    source = "distill.lambda"
    if cfg.distill["lambda"] is None:
        cfg.distill["lambda"] = selected_lambda(cfg.selection)
        source = f"selected on validation, {cfg.selection}"
    try:
        return float(cfg.distill["lambda"]), source
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"distill.lambda = {cfg.distill['lambda']!r} is not a number") from exc


def routing_table(confusion: dict[str, dict[str, int]]) -> Table:
    """The O-P routing confusion as a table: rows ground truth, columns M_O's prediction."""
    first = next(iter(confusion.values()))
    table = Table(title="O-P routing: ground-truth bucket (rows) vs M_O's predicted bucket")
    table.add_column("")
    for name in first:
        table.add_column(name, justify="right")
    for row, counts in confusion.items():
        table.add_row(row, *(str(v) for v in counts.values()))
    return table


@command("eval")
def main(cfg: DictConfig) -> None:
    """Evaluate ``cfg.strategy`` on ``cfg.split`` and write the results to ``cfg.out_dir``."""
    evaluate_checked(cfg)


def evaluate_checked(cfg: DictConfig) -> None:
    """What ``python -m cdkd.eval`` runs on its composed ``cfg``: check, lock, evaluate.

    The output folder is this process's alone while it runs (its lock): a second evaluation
    into the same folder stops with one line naming the first.
    """
    from cdkd.data.datamodule import SPLITS

    if cfg.split not in SPLITS:
        raise ConfigError(f"split '{cfg.split}' must be train, val or test")
    if cfg.strategy not in STRATEGIES:
        raise ConfigError(f"strategy '{cfg.strategy}' must be one of {STRATEGIES}")
    with RunLock(cfg.out_dir):
        evaluate(cfg)


def evaluate(cfg: DictConfig) -> None:
    """The evaluation of :func:`main`, once its configuration is checked."""
    from cdkd.analysis.tables import metrics_table
    from cdkd.data.config import datamodule_from_config
    from cdkd.inference.evaluate import pick_device, run_evaluation, write_evaluation
    from cdkd.inference.origin_partition import routing_confusion
    from cdkd.models.checkpoint import load_network
    from cdkd.partition import PartitionScheme

    extra: dict[str, Any] = {"split": cfg.split, "strategy": cfg.strategy}
    if cfg.strategy == "op":
        if cfg.checkpoint is not None:
            raise ConfigError("strategy=op takes distill.init and distill.teachers, not checkpoint")
        check_checkpoints(cfg, [cfg.distill.init, *teacher_checkpoints(cfg).values()])
        model = build_origin_partition(cfg)
        extra["origin"] = str(cfg.distill.init)
    else:
        if cfg.strategy == "mtkd" and cfg.checkpoint is None:
            extra["lambda"], source = student_lambda(cfg)
            Console().print(f"student: lambda={extra['lambda']:g} ({source})")
        checkpoint = cfg.checkpoint or cfg.checkpoints[cfg.strategy]
        check_checkpoints(cfg, [checkpoint])
        model = load_network(checkpoint, expected_model=cfg.model.name)
        extra["checkpoint"] = str(checkpoint)

    datamodule = datamodule_from_config(cfg, bucket=None)
    datamodule.setup("test" if cfg.split == "test" else "validate")
    loader = datamodule.dataloader(cfg.split)
    predictions = f"{cfg.out_dir}/predictions" if cfg.save_predictions else None
    evaluation = run_evaluation(
        model, loader, pick_device(cfg.device), cfg.empty_policy, predictions, len(loader)
    )
    columns: dict[str, list[Any]] = {}
    console = Console()
    if cfg.strategy == "op":
        predicted = torch.cat(model.predicted_cars)
        scheme = PartitionScheme.from_config(cfg.partition)
        extra["routing"] = routing_confusion(evaluation.cars, predicted, scheme)
        columns["predicted_car"] = predicted.tolist()
        console.print(routing_table(extra["routing"]))
    result = write_evaluation(cfg.out_dir, evaluation, extra, columns)
    console.print(metrics_table(result, f"{cfg.model.name} / {cfg.strategy} on {cfg.split}"))
    console.print(f"results written to {cfg.out_dir}")
