"""The paper's analysis figures and tables, written from finished evaluations.

Items: ``car`` (CAR histograms of the splits, Fig. 5/6), ``ranges`` (the metric across five
equal-count CAR groups, Fig. 8), ``classes`` (per-class differences to the original model,
Table IV), ``visual`` (error-map panels, Fig. 7/9) and ``models`` (Table III and Table IV
across every model of the dataset). Only files that evaluation and the pipeline wrote are
read; nothing is trained or predicted. ``python -m cdkd.analyze`` is the command line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from omegaconf import DictConfig, ListConfig

from cdkd.analysis.compare import (
    MissingInput,
    PerImage,
    align,
    car_distribution_csv,
    car_distribution_markdown,
    car_distribution_rows,
    car_range_csv,
    car_range_markdown,
    car_range_rows,
    class_csv,
    class_differences,
    class_markdown,
    collect_results,
    read_metrics,
    read_per_image,
    results_csv,
    results_markdown,
    strategy_label,
    top_images,
)
from cdkd.errors import ConfigError
from cdkd.files import write_text_atomic
from cdkd.partition import PartitionScheme
from cdkd.runs.layout import RunLayout, results_across_models

if TYPE_CHECKING:
    from cdkd.data.datamodule import ChangeDataModule

#: What ``cdkd.analyze`` can write (``what=``; see the module docstring).
Item = Literal["car", "ranges", "classes", "visual", "models"]
ITEMS: tuple[Item, ...] = get_args(Item)


def requested_items(what: Any) -> tuple[list[Item], bool]:
    """The items asked for and whether they were named explicitly (``all`` is not)."""
    names: list[str] = list(what) if isinstance(what, ListConfig | list | tuple) else [str(what)]
    if names == ["all"]:
        return list(ITEMS), False
    items = [name for name in names if name in ITEMS]
    if len(items) < len(names) or not names:
        raise ConfigError(f"what={what}: use all or one or more of {', '.join(ITEMS)}")
    return items, True


@dataclass(frozen=True)
class Analysis:
    """The configuration of one ``cdkd.analyze`` call and how to suggest missing evaluations."""

    cfg: DictConfig
    eval_args: tuple[str, ...] = ()

    @property
    def out_dir(self) -> Path:
        """Folder of the model's figures and tables."""
        return Path(self.cfg.out_dir)

    @property
    def suffix(self) -> str:
        """Run-folder suffix of the partition (``-two`` for two teachers)."""
        return str(self.cfg.partition.run_suffix)

    @property
    def strategies(self) -> list[str]:
        """The compared strategies, in plotting order."""
        return [str(s) for s in self.cfg.strategies]

    def scheme(self) -> PartitionScheme:
        """The configured CAR partition."""
        return PartitionScheme.from_config(self.cfg.partition)

    def eval_command(self, strategy: str, predictions: bool = False) -> str:
        """The ``cdkd.eval`` command that writes what this analysis needs for ``strategy``."""
        args = [f"strategy={strategy}", *self.eval_args]
        if predictions:
            args.append("save_predictions=true")
        return f"run `python -m cdkd.eval {' '.join(args)}`"

    def eval_folder(self, strategy: str) -> Path:
        """Where ``cdkd.eval`` wrote ``strategy`` for the configured split."""
        return RunLayout.from_config(self.cfg).eval_dir(strategy, self.cfg.split)

    def per_image(self) -> dict[str, PerImage]:
        """``per_image.csv`` of every compared strategy, in image order of the first."""
        runs = {
            s: read_per_image(self.eval_folder(s) / "per_image.csv", self.eval_command(s))
            for s in self.strategies
        }
        return align(runs)

    def data_module(self) -> ChangeDataModule:
        """The dataset of the configuration (synthetic data generated if needed)."""
        from cdkd.data.config import datamodule_from_config

        datamodule = datamodule_from_config(self.cfg, bucket=None)
        datamodule.prepare_data()
        return datamodule

    def title(self, what: str) -> str:
        """Title of a figure or table of this model and split."""
        return f"{self.cfg.model.name} on {self.cfg.data.name} {self.cfg.split}: {what}"


def write_car(analysis: Analysis) -> list[Path]:
    """CAR histograms of the splits (Fig. 5/6) and the share of each CAR bucket."""
    from cdkd.analysis.figures import car_distribution_figure

    scheme = analysis.scheme()
    datamodule = analysis.data_module()
    cars = {str(split): datamodule.index(str(split)).cars for split in analysis.cfg.car_splits}
    rows = car_distribution_rows(cars, scheme)
    stem = analysis.out_dir / "car_distribution"
    title = f"CAR distribution of {analysis.cfg.data.name} (partition {scheme.name})"
    car_distribution_figure(cars, scheme, stem.with_suffix(".png"), title)
    write_text_atomic(stem.with_suffix(".md"), car_distribution_markdown(rows, scheme, title))
    write_text_atomic(stem.with_suffix(".csv"), car_distribution_csv(rows, scheme))
    return [stem.with_suffix(s) for s in (".png", ".md", ".csv")]


def write_ranges(analysis: Analysis) -> list[Path]:
    """The metric of every strategy across equal-count CAR groups (Fig. 8), plot and tables."""
    from cdkd.analysis.figures import car_range_figure

    cfg, strategies = analysis.cfg, analysis.strategies
    rows = car_range_rows(analysis.per_image(), int(cfg.groups), str(cfg.metric))
    stem = analysis.out_dir / f"car_ranges-{cfg.split}"
    title = analysis.title(f"{cfg.metric} across CAR ranges")
    car_range_figure(rows, strategies, stem.with_suffix(".png"), title, str(cfg.metric))
    markdown = car_range_markdown(rows, strategies, title, str(cfg.metric))
    write_text_atomic(stem.with_suffix(".md"), markdown)
    write_text_atomic(stem.with_suffix(".csv"), car_range_csv(rows, strategies))
    return [stem.with_suffix(s) for s in (".png", ".md", ".csv")]


def write_classes(analysis: Analysis) -> list[Path]:
    """Per-class differences of each strategy to the original model (Table IV)."""
    strategies = analysis.strategies
    if "original" not in strategies or len(strategies) < 2:
        raise ConfigError(f"strategies={strategies}: classes needs original and another strategy")
    metrics = {
        s: read_metrics(analysis.eval_folder(s) / "metrics.json", analysis.eval_command(s))[
            "per_image"
        ]
        for s in strategies
    }
    differences = {
        f"{strategy_label(s)} − {strategy_label('original')}": class_differences(
            metrics["original"], metrics[s]
        )
        for s in strategies
        if s != "original"
    }
    absolute = {strategy_label(s): metrics[s] for s in strategies}
    stem = analysis.out_dir / f"classes-{analysis.cfg.split}"
    title = analysis.title("per-class change against the original model")
    write_text_atomic(stem.with_suffix(".md"), class_markdown(differences, title, absolute))
    write_text_atomic(stem.with_suffix(".csv"), class_csv(differences))
    return [stem.with_suffix(".md"), stem.with_suffix(".csv")]


def write_visual(analysis: Analysis) -> list[Path]:
    """Error-map panel of the chosen images, or of those where the strategies differ most."""
    from cdkd.analysis.figures import load_column, visual_panel

    cfg = analysis.cfg
    folders = {}
    for strategy in analysis.strategies:
        folder = analysis.eval_folder(strategy) / "predictions"
        if not folder.is_dir():
            hint = analysis.eval_command(strategy, predictions=True)
            raise MissingInput(f"{folder}: no saved predictions; {hint}")
        folders[strategy_label(strategy)] = folder
    runs = analysis.per_image()
    names = [str(n) for n in cfg.images] if cfg.images else top_images(runs, int(cfg.top))
    if not names:
        raise ConfigError(f"top={cfg.top}: choose at least one image")
    datamodule = analysis.data_module()
    samples = {}
    for sample in datamodule.samples(str(cfg.split)):
        samples[sample.name] = samples[Path(sample.name).stem] = sample
    columns = []
    for name in names:
        if name not in samples:
            raise ConfigError(f"images: {name} is not in the {cfg.split} split of {cfg.data.root}")
        sample = samples[name]
        scores = {}
        for strategy, run in runs.items():
            if sample.name in run.names:
                position = run.names.index(sample.name)
                scores[strategy_label(strategy)] = float(run.scores[str(cfg.metric)][position])
        columns.append(load_column(sample, folders, scores, datamodule.label_threshold))
    path = analysis.out_dir / f"visual-{cfg.split}.png"
    visual_panel(columns, path, cell=int(cfg.cell), metric=str(cfg.metric))
    return [path]


def write_models(analysis: Analysis) -> list[Path]:
    """Table III and Table IV across every model of the dataset with pipeline results."""
    cfg, suffix = analysis.cfg, analysis.suffix
    data_dir = Path(cfg.results_dir)
    results = collect_results(data_dir, suffix)
    stem = results_across_models(data_dir, suffix)
    partitions = sorted({str(r.get("partition", "?")) for r in results})
    title = f"{cfg.data.name} test, all models ({'/'.join(partitions)} teachers)"
    write_text_atomic(stem.with_suffix(".md"), results_markdown(results, title))
    write_text_atomic(stem.with_suffix(".csv"), results_csv(results))
    written = [stem.with_suffix(".md"), stem.with_suffix(".csv")]
    differences = {}
    for result in results:
        layout = RunLayout(data_dir / result["model"], suffix)
        files = [layout.eval_dir(s, cfg.split) / "metrics.json" for s in ("original", "mtkd")]
        if all(f.is_file() for f in files):
            base, student = (read_metrics(f)["per_image"] for f in files)
            differences[result["model"]] = class_differences(base, student)
    if differences:
        classes = data_dir / f"classes-{cfg.split}{suffix}"
        title = f"{cfg.data.name} {cfg.split}, all models: MTKD − original per class"
        write_text_atomic(classes.with_suffix(".md"), class_markdown(differences, title))
        write_text_atomic(classes.with_suffix(".csv"), class_csv(differences))
        written += [classes.with_suffix(".md"), classes.with_suffix(".csv")]
    return written


WRITERS: dict[Item, Callable[[Analysis], list[Path]]] = {
    "car": write_car,
    "ranges": write_ranges,
    "classes": write_classes,
    "visual": write_visual,
    "models": write_models,
}


def run_analysis(analysis: Analysis) -> tuple[list[Path], list[str]]:
    """Write the requested items; returns the files written and the notes of skipped items.

    Named items must succeed. With ``what=all`` an item whose inputs were not produced yet
    (e.g. no saved predictions) is skipped with a note; if every item is skipped, the first
    reason is raised.
    """
    items, explicit = requested_items(analysis.cfg.what)
    written: list[Path] = []
    skipped: list[MissingInput] = []
    for item in items:
        try:
            written += WRITERS[item](analysis)
        except MissingInput as exc:
            if explicit:
                raise
            skipped.append(MissingInput(f"{item} skipped: {exc}"))
    if not written and skipped:
        raise skipped[0]
    return written, [str(exc) for exc in skipped]
