"""The distillation study of ``docs/distillation.md``: every loss, routing and control, 3 seeds.

For each model and seed it trains, with ``experiment=study`` (synthetic data, a short
schedule), the baseline M_O, the three CAR-partition teachers (fine-tuned from that M_O, or
from scratch with ``--teacher-init scratch``) and, per recipe of :data:`RECIPES`, one student
per lambda of its grid, each initialised from that seed's M_O and taught by that seed's
teachers; it evaluates O-P on test; then the cross-architecture case (:data:`CROSS`). Each
recipe's lambda is selected on validation per seed, as the pipeline does; the table of
per-image test mIoU (mean +- std over seeds) of the selected students, and the scores of every
lambda, go into ``docs/distillation.md`` between its ``study`` markers, with the students' and
teachers' size and CPU inference time measured side by side.

Every run goes to ``<runs>/study/seed<N>/<model>/<folder>`` and is skipped when its
``metrics.json`` exists, so an interrupted study continues where it stopped. Chains (one model
and seed) run in ``--workers`` processes of one thread each, seed by seed, the
cross-architecture chains last.

    python scripts/study.py                      # the full study (about 1.5 h on 2 cores)
    python scripts/study.py --tiny --seeds 0     # a smoke run of the whole machinery
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "distillation.md"
BEGIN, END = "<!-- study:begin -->", "<!-- study:end -->"
MODELS = ("tinycd", "fc_siam_diff")
#: Cross-architecture distillation: (teachers' architecture, student's).
CROSS = ("changer_b0", "tinycd")
#: Learning rates for the study's few hundred steps from random weights: the recipes' rates
#: (Table II) are for 200k steps from pretrained backbones, and at them FC-Siam-diff and
#: Changer-MiT-b0 predicted no change anywhere in trial runs of this schedule; TinyCD keeps its own.
MODEL_OVERRIDES: dict[str, tuple[str, ...]] = {
    "fc_siam_diff": ("model.optimizer.lr=0.01",),
    "changer_b0": ("model.optimizer.lr=0.001",),
}
#: Optimizer steps of each teacher: fine-tuning M_O on a partition (``--teacher-init
#: baseline``, the default) needs fewer than M_O's own ``schedule.max_steps``.
TEACHER_STEPS = 120
STAGES = {"small": "teacher_s", "medium": "teacher_m", "large": "teacher_l"}
TINY = (
    "data.root=${paths.data_dir}/synthetic-study-tiny",
    "data.synthetic.counts={train: 24, val: 8, test: 8}",
    "schedule.max_steps=4",
    "schedule.distill_max_steps=2",
    "schedule.warmup_steps=1",
    "schedule.val_every=2",
)


@dataclass(frozen=True)
class Recipe:
    """One kind of student: its folder, its row label, its ``distill`` overrides and the
    lambdas it is trained at (the study keeps the one with the best validation score)."""

    folder: str
    label: str
    overrides: tuple[str, ...]
    lambdas: tuple[float, ...]

    def run_folder(self, lam: float, teacher_model: str | None = None) -> str:
        """The run folder of the student at ``lam`` (taught by ``teacher_model``'s teachers)."""
        cross = f"-from-{teacher_model}" if teacher_model else ""
        return f"student-{self.folder}{cross}/lambda_{lam:g}"


#: The students of each chain. lambda grids: MSE of logits (mean over elements) spans the
#: paper's values up to 1; the other losses a decade around their papers' usual weights.
RECIPES = (
    Recipe("none", "no distillation (lambda=0, same steps)", (), (0.0,)),
    Recipe("mse", "MTKD: mse, car (the paper)", (), (1e-3, 1e-2, 1e-1, 1.0)),
    Recipe("kl", "kl (T=1), car", ("distill.loss=kl",), (0.1, 1.0)),
    Recipe("cwd", "cwd (T=4), car", ("distill.loss=cwd", "distill.temperature=4"), (0.3, 3.0)),
    Recipe("dist", "dist (T=1, beta=gamma=1), car", ("distill.loss=dist",), (0.1, 1.0)),
    Recipe("feature", "feature, car", ("distill.loss=feature",), (0.1, 1.0)),
    Recipe("soft", "mse, soft (width 0.02)", ("distill.routing=soft",), (0.1, 1.0)),
    Recipe("ensemble", "mse, ensemble (tau 0.05)", ("distill.routing=ensemble",), (0.1, 1.0)),
    Recipe(
        "single-self",
        "mse, single teacher = M_O (self)",
        ("distill.routing=single", "distill.single_teacher=init"),
        (0.1, 1.0),
    ),
)
#: Students of the cross-architecture case (teachers of CROSS[0], student CROSS[1]); its
#: lambda = 0 control is the student model's own ``none`` run (same M_O, same steps).
CROSS_RECIPES = (RECIPES[1],)


@dataclass(frozen=True)
class Chain:
    """One model and seed: the runs to make, in order."""

    model: str
    seed: int
    runs: Path
    base: tuple[str, ...]
    skip: frozenset[str]
    teacher_model: str | None = None
    teacher_init: str = "baseline"
    teacher_steps: int = TEACHER_STEPS

    @property
    def dir(self) -> Path:
        return self.runs / f"seed{self.seed}" / self.model

    def stage_dir(self, stage: str, model: str | None = None) -> Path:
        return self.runs / f"seed{self.seed}" / (model or self.model) / stage


def compose(name: str, overrides: Sequence[str]) -> Any:
    """``conf/<name>.yaml`` with ``overrides``, as the command line composes it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from cdkd.config import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return hydra_compose(config_name=name, overrides=list(overrides))


def train(chain: Chain, model: str, stage: str, folder: Path, extra: Sequence[str] = ()) -> None:
    """Train one run into ``folder`` unless it has finished before."""
    from cdkd.training.run import train as train_run

    if (folder / "metrics.json").is_file():
        return
    overrides = [*chain.base, f"model={model}", *MODEL_OVERRIDES.get(model, ())]
    overrides += [f"seed={chain.seed}", f"stage={stage}", "logger=none", f"run_dir={folder}"]
    cfg = compose("train", [*overrides, *extra])
    print(f"[study] {model} seed {chain.seed}: {folder.relative_to(chain.runs)}", flush=True)
    train_run(cfg)


def teacher_overrides(chain: Chain, model: str) -> list[str]:
    """``distill.init`` (the chain's M_O) and ``distill.teachers`` of ``model``'s runs."""
    teachers = ", ".join(
        f"{bucket}: '{chain.stage_dir(stage, model) / 'best.ckpt'}'"
        for bucket, stage in STAGES.items()
    )
    return [
        f"distill.init={chain.stage_dir('baseline') / 'best.ckpt'}",
        f"distill.teachers={{{teachers}}}",
        f"distill.teacher_model={model}",
    ]


def evaluate_op(chain: Chain, model: str) -> None:
    """O-P of ``model``'s M_O and teachers on test, into ``<model>/op``."""
    from cdkd.cli.eval import evaluate

    out = chain.stage_dir("op", model)
    if (out / "metrics.json").is_file():
        return
    overrides = [*chain.base, f"model={model}", "strategy=op", "split=test", f"out_dir={out}"]
    teachers = teacher_overrides(replace(chain, model=model, teacher_model=None), model)
    evaluate(compose("eval", [*overrides, *teachers]))


def run_chain(chain: Chain) -> str:
    """Every run of ``chain`` (in one process of one thread)."""
    import torch

    torch.set_num_threads(1)
    teacher_model = chain.teacher_model or chain.model
    recipes = CROSS_RECIPES if chain.teacher_model else RECIPES
    train(chain, teacher_model, "baseline", chain.stage_dir("baseline", teacher_model))
    teacher = [f"schedule.max_steps={chain.teacher_steps}"]
    if chain.teacher_init == "baseline":
        teacher.append(f"model.weights={chain.stage_dir('baseline', teacher_model) / 'best.ckpt'}")
    for stage in STAGES.values():
        train(chain, teacher_model, stage, chain.stage_dir(stage, teacher_model), teacher)
    evaluate_op(chain, teacher_model)
    for recipe in recipes:
        if recipe.folder in chain.skip:
            continue
        for lam in recipe.lambdas:
            folder = chain.dir / recipe.run_folder(lam, chain.teacher_model)
            extra = [*teacher_overrides(chain, teacher_model), *recipe.overrides]
            train(chain, chain.model, "student", folder, [*extra, f"distill.lambda={lam}"])
    return f"{chain.model} seed {chain.seed}"


def run_scores(folder: Path) -> dict[str, float] | None:
    """Per-image val and test mIoU (%) of a finished training run."""
    path = folder / "metrics.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return {split: 100.0 * float(data[split]["per_image"]["mIoU"]) for split in ("val", "test")}


def selected(
    chain_dir: Path, recipe: Recipe, teacher_model: str | None = None
) -> tuple[float, float] | None:
    """(lambda, test mIoU) of the recipe's student with the best validation mIoU (the smaller
    lambda on a tie, as the pipeline selects), once every lambda of the grid has finished."""
    folders = {lam: chain_dir / recipe.run_folder(lam, teacher_model) for lam in recipe.lambdas}
    scores = {lam: run_scores(folder) for lam, folder in folders.items()}
    if any(score is None for score in scores.values()):
        return None
    best = min(scores, key=lambda lam: (-scores[lam]["val"], lam))  # type: ignore[index]
    return best, scores[best]["test"]  # type: ignore[index]


def test_miou(folder: Path) -> float | None:
    """Per-image test mIoU (%) of a run or an evaluation folder, if it finished."""
    path = folder / "metrics.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    scores = data["test"]["per_image"] if "test" in data else data["per_image"]
    return 100.0 * float(scores["mIoU"])


def mean_std(values: list[float | None], trivial: float | None = None) -> str:
    """``mean +- std`` of the finished values, ``(n=...)`` when fewer than 3, and how many
    of them are the ``trivial`` score (no change predicted anywhere: a collapsed run)."""
    done = [v for v in values if v is not None]
    if not done:
        return "-"
    std = statistics.stdev(done) if len(done) > 1 else 0.0
    text = f"{statistics.mean(done):.2f} ± {std:.2f}"
    if len(done) < 3:
        text += f" (n={len(done)})"
    collapsed = sum(trivial is not None and abs(v - trivial) < 0.005 for v in done)
    return text + (f" [{collapsed} trivial]" if collapsed else "")


def no_change_miou(base: Sequence[str]) -> float:
    """Per-image test mIoU (%) of predicting no change anywhere (``empty_policy=one``): 100
    for an unchanged pair, ``(1 - CAR) / 2`` otherwise (the changed class scores 0)."""
    from cdkd.data.io import read_mask

    root = Path(compose("train", base).data.root) / "test" / "label"
    scores = []
    for path in sorted(root.glob("*.png")):
        car = float((read_mask(path) > 0).mean())
        scores.append(1.0 if car == 0 else (1.0 - car) / 2)
    return 100.0 * statistics.mean(scores)


def inference_ms(models: Sequence[str], size: int = 256, repeats: int = 15) -> dict[str, float]:
    """Median CPU time (ms, one thread) of one forward of a ``size`` pair, models alternated."""
    import torch

    from cdkd.models import create_model

    torch.set_num_threads(1)
    nets = {name: create_model(name).eval() for name in models}
    x = torch.randn(1, 3, size, size)
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for step in range(repeats + 2):
            for name, net in nets.items():
                start = time.perf_counter()
                net(x, x)
                if step >= 2:
                    times[name].append(1000 * (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in times.items()}


def table(runs: Path, seeds: Sequence[int], base: Sequence[str] = ("experiment=study",)) -> str:
    """The study's markdown: the main table, every lambda's scores and the cross-architecture
    table."""
    from cdkd.models import create_model
    from cdkd.models.complexity import count_parameters

    trivial = no_change_miou(base)

    def score(model: str, folder: str) -> str:
        return mean_std([test_miou(runs / f"seed{s}" / model / folder) for s in seeds], trivial)

    def chosen(model: str, recipe: Recipe, teacher_model: str | None = None) -> str:
        picks = [selected(runs / f"seed{s}" / model, recipe, teacher_model) for s in seeds]
        cell = mean_std([pick[1] if pick else None for pick in picks], trivial)
        if len(recipe.lambdas) > 1:
            cell += " (λ " + ", ".join(f"{pick[0]:g}" if pick else "-" for pick in picks) + ")"
        return cell

    def grid(recipe: Recipe) -> str:
        values = ", ".join(f"{lam:g}" for lam in recipe.lambdas)
        return f", λ from {{{values}}}" if len(recipe.lambdas) > 1 else ""

    seed_list = ", ".join(map(str, seeds))
    lines = [
        f"Per-image test mIoU (%), mean ± std over seeds {seed_list}; each student is the one of "
        "its recipe's λ grid with the best validation mIoU in its seed (the λ chosen per seed "
        f"in brackets). Predicting no change anywhere scores {trivial:.2f} on this test split, "
        "and `[k trivial]` counts the runs that collapsed to it.",
        "",
        "| recipe | " + " | ".join(MODELS) + " |",
        "|---|" + "---|" * len(MODELS),
        "| original M_O | " + " | ".join(score(m, "baseline") for m in MODELS) + " |",
        "| O-P (M_O routes to a teacher) | " + " | ".join(score(m, "op") for m in MODELS) + " |",
    ]
    for recipe in RECIPES:
        cells = " | ".join(chosen(m, recipe) for m in MODELS)
        lines.append(f"| {recipe.label}{grid(recipe)} | {cells} |")
    every = [
        "",
        "Every λ (per-image test mIoU %, mean ± std over the same seeds, before selection):",
        "",
        "| recipe | λ | " + " | ".join(MODELS) + " |",
        "|---|---|" + "---|" * len(MODELS),
    ]
    for recipe in RECIPES:
        for lam in recipe.lambdas:
            cells = " | ".join(score(m, recipe.run_folder(lam)) for m in MODELS)
            every.append(f"| {recipe.label} | {lam:g} | {cells} |")
    teacher, student = CROSS
    ms = inference_ms([teacher, student])
    params = {m: count_parameters(create_model(m)) / 1e6 for m in (teacher, student)}
    size = {m: f"{params[m]:.2f} | {ms[m]:.1f}" for m in (teacher, student)}
    op_size = f"{2 * params[teacher]:.2f} (2 networks) | {2 * ms[teacher]:.1f} (2 forwards)"
    control = chosen(student, RECIPES[0])
    cross = [
        "",
        f"Cross-architecture: {teacher} teachers, {student} student (per-image test mIoU %; "
        "parameters; median CPU time of one 256x256 pair on one thread, the two networks "
        "alternated in one process; O-P runs M_O and then one teacher):",
        "",
        "| network | role | test mIoU | params (M) | CPU ms / pair |",
        "|---|---|---|---|---|",
        f"| {teacher} | original M_O | {score(teacher, 'baseline')} | {size[teacher]} |",
        f"| {teacher} | O-P (M_O + teacher) | {score(teacher, 'op')} | {op_size} |",
        f"| {student} | original M_O | {score(student, 'baseline')} | {size[student]} |",
        f"| {student} | {RECIPES[0].label} | {control} | {size[student]} |",
    ]
    for recipe in CROSS_RECIPES:
        result = chosen(student, recipe, teacher)
        label = f"student, {recipe.label}{grid(recipe)}"
        cross.append(f"| {student} | {label} | {result} | {size[student]} |")
    return "\n".join([*lines, *every, *cross])


def write_doc(text: str) -> None:
    """Replace the study block of ``docs/distillation.md``."""
    doc = DOC.read_text()
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{DOC}: the {BEGIN} / {END} markers are missing")
    head, rest = doc.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    DOC.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--runs", type=Path, default=Path(os.environ.get("CDKD_RUNS_DIR", "runs")) / "study"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip", nargs="*", default=[], help="recipe folders to leave out")
    parser.add_argument(
        "--teacher-init",
        choices=("baseline", "scratch"),
        default="baseline",
        help="teachers fine-tuned from M_O (default) or trained from random weights",
    )
    parser.add_argument("--tiny", action="store_true", help="a few steps on a tiny set (smoke)")
    parser.add_argument("--no-doc", action="store_true", help="print the table, keep the doc")
    args = parser.parse_args(argv)
    base = ("experiment=study", *(TINY if args.tiny else ()))
    options = {
        "runs": args.runs,
        "base": base,
        "skip": frozenset(args.skip),
        "teacher_init": args.teacher_init,
        "teacher_steps": 2 if args.tiny else TEACHER_STEPS,
    }
    # Every seed's main chains first, then the cross-architecture ones (each after its seed's
    # TinyCD chain, whose first run is the student's M_O): a study cut short still has the
    # main table for every seed.
    chains = [Chain(model, s, **options) for s in args.seeds for model in (CROSS[1], MODELS[1])]
    chains += [Chain(CROSS[1], s, teacher_model=CROSS[0], **options) for s in args.seeds]
    started = time.perf_counter()
    with ProcessPoolExecutor(args.workers, max_tasks_per_child=1) as pool:
        for done in pool.map(run_chain, chains):
            print(f"[study] done: {done} ({time.perf_counter() - started:.0f} s)", flush=True)
    text = table(args.runs, args.seeds, base)
    print(text)
    if not args.no_doc:
        write_doc(text)


if __name__ == "__main__":
    main()
