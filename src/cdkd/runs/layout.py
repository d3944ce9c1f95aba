"""The run layout: the one place that knows where cdkd's runs and their outputs live.

::

    <runs>/<data>/results<suffix>.md|.csv     tables across the dataset's models
    <runs>/<data>/<model>/                    RunLayout.model_dir
        baseline/                             M_O (one run folder, see RunFolder)
        teacher_s<suffix>/ ...                one per CAR bucket
        student<suffix><variant>/selection.json       the lambda chosen on validation
        student<suffix><variant>/lambda_<lambda>/     one student per lambda
        <stage folder>-seed<N>/               a stage trained with a seed other than 42
        eval/<strategy><suffix>/<split>/      what cdkd.eval writes (mtkd: + <variant>)
        analysis<suffix><variant>/            what cdkd.analyze writes for the model
        multirun/                             Hydra multirun sweeps
        results<suffix><variant>.json|.md     the pipeline's Table III block

``<suffix>`` is the partition's ``run_suffix`` ("" for three teachers, "-two" for two), so
runs of the two partitions never mix. ``<variant>`` names a distillation recipe other than
the paper's (:func:`distill_variant`: "-cwd-soft", "-single-self", "-from-changer_b0"), so the
students of different recipes, which share the baseline and the teachers, never mix either.
Python asks :class:`RunLayout` and :class:`RunFolder`;
the configs ask the ``layout`` resolver (``${layout:run_dir}``, ``${layout:best,baseline}``;
see :func:`resolve`), registered by :mod:`cdkd.config`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdkd.errors import ConfigError

BASELINE = "baseline"
STUDENT = "student"
#: The evaluation strategy that scores a student (its folder carries the recipe's variant).
STUDENT_STRATEGY = "mtkd"
#: The paper's distillation loss and routing: recipes with these get no variant suffix.
PAPER_LOSS, PAPER_ROUTING = "mse", "car"
#: File names (without ``.ckpt``) of the best-on-validation and the latest checkpoint.
BEST, LAST = "best", "last"
CHECKPOINT_SUFFIX = ".ckpt"
#: The seed of ``conf/train.yaml``: its runs keep the plain stage folders; other seeds get
#: their own (:func:`seeded`), so the members of a seed sweep never share a folder.
DEFAULT_SEED = 42


def seeded(run_dir: Path, seed: Any) -> Path:
    """The run folder of ``seed``: ``run_dir`` for the default seed, else ``<run_dir>-seed<N>``."""
    return (
        run_dir
        if str(seed) == str(DEFAULT_SEED)
        else run_dir.with_name(f"{run_dir.name}-seed{seed}")
    )


@dataclass(frozen=True)
class RunFolder:
    """The files of one training run, inside its folder."""

    path: Path

    @property
    def best(self) -> Path:
        """The checkpoint with the best validation score."""
        return self.path / f"{BEST}{CHECKPOINT_SUFFIX}"

    @property
    def last(self) -> Path:
        """The latest checkpoint, for resuming."""
        return self.path / f"{LAST}{CHECKPOINT_SUFFIX}"

    @property
    def metrics(self) -> Path:
        """The summary of the post-fit evaluation."""
        return self.path / "metrics.json"

    @property
    def provenance(self) -> Path:
        """What the run depends on (code, packages, data, sources)."""
        return self.path / "provenance.json"

    @property
    def config(self) -> Path:
        """The resolved configuration of the run."""
        return self.path / "config.yaml"

    def eval_dir(self, split: str) -> Path:
        """The post-fit evaluation of the best checkpoint on ``split``."""
        return self.path / "eval" / split

    @property
    def outputs(self) -> list[Path]:
        """What a fresh start must not mix with (moved aside, never deleted)."""
        return [self.best, self.last, self.metrics, self.provenance, self.path / "eval"]

    def superseded(self, stamp: str) -> Path:
        """Where a fresh start moves the earlier run's outputs."""
        return self.path / "superseded" / stamp


def distill_variant(distill: Mapping[str, Any] | None, model: str) -> str:
    """The folder suffix of a distillation recipe: "" for the paper's, else its parts.

    Parts, each only when it differs from the paper: the loss (``-cwd``), the routing
    (``-soft``; ``-single-self`` when M_O distils itself), and the teachers' architecture when it
    is not ``model``'s (``-from-changer_b0``). Options that refine a recipe (temperature,
    widths) are not named: the recipe guard keeps a folder to one setting of them.
    """
    if not distill:
        return ""
    parts = []
    loss, routing = distill.get("loss"), distill.get("routing")
    if loss not in (None, PAPER_LOSS):
        parts.append(str(loss))
    if routing not in (None, PAPER_ROUTING):
        parts.append(str(routing))
        if routing == "single" and distill.get("single_teacher") == "init":
            parts.append("self")
    teacher_model = distill.get("teacher_model")
    if teacher_model not in (None, model):
        parts.append(f"from-{teacher_model}")
    return "".join(f"-{part}" for part in parts)


@dataclass(frozen=True)
class RunLayout:
    """Where one model's runs on one dataset live, for one partition (its run suffix) and one
    distillation recipe (its variant, which only the student side carries)."""

    model_dir: Path
    suffix: str = ""
    variant: str = ""

    @classmethod
    def of(cls, runs_dir: str | Path, data: str, model: str, suffix: str = "") -> RunLayout:
        """The layout of ``model`` on ``data`` under ``runs_dir``."""
        return cls(Path(runs_dir) / data / model, suffix)

    @classmethod
    def from_config(cls, cfg: Any, model: str | None = None) -> RunLayout:
        """The layout a composed config points at (``paths``, ``data``, ``model``, ``partition``
        and, where the config has one, ``distill`` for the variant).

        ``model`` takes another model's runs (e.g. the teachers of cross-architecture
        distillation), without a variant.
        """
        distill = None if model else cfg.get("distill")
        return cls(
            Path(cfg.paths.runs_dir) / cfg.data.name / (model or cfg.model.name),
            str(cfg.partition.run_suffix or ""),
            distill_variant(distill, cfg.model.name),
        )

    @property
    def dataset_dir(self) -> Path:
        """The folder of every model's runs on this dataset."""
        return self.model_dir.parent

    def stage_dir(self, stage: str, lam: Any = None) -> Path:
        """The run folder of ``stage`` (the student's for distillation weight ``lam``).

        The baseline does not depend on the partition and has no suffix; every other stage
        (teachers, students) carries it.
        """
        if stage == STUDENT:
            return self.student_dir(lam)
        if stage == BASELINE:
            return self.model_dir / BASELINE
        return self.model_dir / f"{stage}{self.suffix}"

    def stage(self, stage: str, lam: Any = None) -> RunFolder:
        """The files of ``stage``'s run (see :meth:`stage_dir`)."""
        return RunFolder(self.stage_dir(stage, lam))

    @property
    def student_root(self) -> Path:
        """The students' folder: one run per lambda and the selection among them."""
        return self.model_dir / f"{STUDENT}{self.suffix}{self.variant}"

    def student_dir(self, lam: Any) -> Path:
        """The student run of distillation weight ``lam``, named as the config spells it."""
        return self.student_root / f"lambda_{lam}"

    @property
    def selection(self) -> Path:
        """The pipeline's choice of lambda on validation."""
        return self.student_root / "selection.json"

    def eval_dir(self, strategy: str, split: str) -> Path:
        """Where ``cdkd.eval`` writes ``strategy`` on ``split`` (the student's: per variant)."""
        variant = self.variant if strategy == STUDENT_STRATEGY else ""
        return self.model_dir / "eval" / f"{strategy}{self.suffix}{variant}" / split

    @property
    def analysis_dir(self) -> Path:
        """The model's figures and tables of ``cdkd.analyze``."""
        return self.model_dir / f"analysis{self.suffix}{self.variant}"

    @property
    def multirun_dir(self) -> Path:
        """Hydra's folder for multirun sweeps of this model."""
        return self.model_dir / "multirun"

    @property
    def results(self) -> Path:
        """Stem of the pipeline's Table III block (``.json`` and ``.md``)."""
        return self.model_dir / f"results{self.suffix}{self.variant}"

    def teacher_checkpoints(
        self, teacher_stages: Mapping[str, str], explicit: Mapping[str, Any] | None = None
    ) -> dict[str, Path]:
        """Each bucket's teacher: ``explicit[bucket]`` when given, else its stage's best."""
        explicit = dict(explicit or {})
        unknown = sorted(set(explicit) - set(teacher_stages))
        if unknown:
            raise ConfigError(
                f"teachers given for unknown bucket(s) {unknown}; buckets: {list(teacher_stages)}"
            )
        return {
            bucket: Path(explicit.get(bucket) or self.stage(stage).best)
            for bucket, stage in teacher_stages.items()
        }


def results_across_models(dataset_dir: str | Path, suffix: str = "") -> Path:
    """Stem of the tables across every model of a dataset (``.md`` and ``.csv``)."""
    return Path(dataset_dir) / f"results{suffix}"


def model_results(dataset_dir: str | Path, suffix: str = "") -> list[Path]:
    """Every model's pipeline results under ``dataset_dir`` (unsorted)."""
    return list(Path(dataset_dir).glob(f"*/results{suffix}.json"))


def teacher_checkpoints(cfg: Any) -> dict[str, Path]:
    """The teachers a config names: ``distill.teachers``, else the teacher stages' best."""
    layout = RunLayout(Path(cfg.distill.teacher_dir), str(cfg.partition.run_suffix or ""))
    return layout.teacher_checkpoints(cfg.partition.teacher_stages, cfg.distill.teachers)


#: The queries of the ``layout`` resolver: name -> path, given the layout and the config root.
_QUERIES: dict[str, Callable[..., Path | str]] = {
    "run_dir": lambda lay, root: seeded(
        lay.stage_dir(root.stage.name, root.distill["lambda"]), root.get("seed", DEFAULT_SEED)
    ),
    "model_dir": lambda lay, root, model=None: RunLayout.from_config(root, model).model_dir,
    "best": lambda lay, root, stage: lay.stage(stage, root.distill["lambda"]).best,
    "selection": lambda lay, root: lay.selection,
    "eval_dir": lambda lay, root, strategy, split: lay.eval_dir(strategy, split),
    "analysis_dir": lambda lay, root: lay.analysis_dir,
    "dataset_dir": lambda lay, root: lay.dataset_dir,
    "multirun_dir": lambda lay, root: lay.multirun_dir,
    "best_name": lambda lay, root: BEST,
    "last_name": lambda lay, root: LAST,
}


def resolve(query: str, *args: Any, _root_: Any) -> str:
    """The ``${layout:QUERY[,ARG...]}`` resolver: a path of :class:`RunLayout` as a string.

    Queries: ``run_dir`` (the stage folder of ``stage.name``, of ``seed`` by :func:`seeded`),
    ``model_dir[,MODEL]``, ``best,STAGE`` (its best checkpoint), ``selection``,
    ``eval_dir,STRATEGY,SPLIT``, ``analysis_dir``, ``dataset_dir``, ``multirun_dir``, and the
    checkpoint file names ``best_name`` / ``last_name``. The layout comes from the config's
    ``paths.runs_dir``, ``data.name``, ``model.name`` and ``partition.run_suffix`` (the
    student's folder from ``distill.lambda``); a value set on the command line
    (``run_dir=...``) replaces the query.
    """
    if query not in _QUERIES:
        raise ConfigError(f"layout resolver: unknown query '{query}'; use one of {list(_QUERIES)}")
    return str(_QUERIES[query](RunLayout.from_config(_root_), _root_, *args))
