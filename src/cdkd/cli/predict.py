"""``python -m cdkd.predict``: change maps for image pairs and GeoTIFF scenes of any size.

``input=DIR`` predicts every pair of ``DIR/A`` and ``DIR/B`` into ``output=DIR``;
``image1=PATH image2=PATH output=PATH`` predicts one pair. Georeferenced TIFF pairs give a
GeoTIFF on the input grid, other images a 0/255 PNG (see :mod:`cdkd.inference.predict`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from omegaconf import DictConfig
from rich.console import Console
from rich.progress import Progress, TaskID

from cdkd.cli.common import command
from cdkd.errors import DataError
from cdkd.inference.evaluate import pick_device
from cdkd.inference.geotiff import SceneOptions, SceneResult
from cdkd.inference.predict import plan_jobs, predict_pair
from cdkd.inference.raster import Scaling
from cdkd.models import create_model


def scene_options(cfg: DictConfig) -> SceneOptions:
    """The tiling, band, scaling and output settings of ``cfg``."""
    return SceneOptions(
        tile_size=int(cfg.tile_size),
        overlap=int(cfg.overlap),
        batch_size=int(cfg.batch_size),
        bands=tuple(int(b) for b in cfg.bands),
        scaling=Scaling.parse(cfg.scale, tuple(cfg.percentiles)),
        probability=bool(cfg.output_probability),
        overlay=bool(cfg.overlay),
        overlay_max_size=int(cfg.overlay_max_size),
    )


@dataclass(frozen=True)
class WindowBar:
    """A rich progress task counting the windows of the current pair."""

    progress: Progress
    task: TaskID

    def start(self, total: int) -> None:
        self.progress.reset(self.task, total=total)

    def advance(self, count: int) -> None:
        self.progress.advance(self.task, count)


def scene_summary(result: SceneResult) -> str:
    """One line on what a scene's map holds."""
    share = result.changed_pixels / max(result.valid_pixels, 1)
    overlay = f", overlay {result.overlay}" if result.overlay else ""
    return (
        f"{result.output}: {share:.2%} of {result.valid_pixels} valid pixels changed, "
        f"nodata={result.nodata}{overlay}"
    )


@command("predict")
def main(cfg: DictConfig) -> None:
    """Write one change map per readable pair; exit non-zero if any pair failed."""
    options = scene_options(cfg)
    jobs, problems = plan_jobs(cfg.input, cfg.image1, cfg.image2, cfg.output)
    device = pick_device(cfg.device)
    model = create_model(cfg.model.name, weights=cfg.weights, **dict(cfg.model.kwargs))
    model = model.to(device).eval()
    mean, std = list(cfg.model.normalize.mean), list(cfg.model.normalize.std)
    notes: list[str] = []
    written = 0
    with Progress(transient=True) as progress:
        pairs = progress.add_task("pairs", total=len(jobs))
        bar = WindowBar(progress, progress.add_task("windows", total=None))
        for job in jobs:
            try:
                result = predict_pair(model, job, mean, std, options, device, bar)
                if result is not None:
                    notes.append(scene_summary(result))
                written += 1
            except DataError as exc:
                if cfg.input is None:
                    raise
                problems.append(str(exc))
            progress.advance(pairs)
    console = Console(stderr=True)
    for problem in problems:
        console.print(f"skipped: {problem}", highlight=False, soft_wrap=True)
    for note in notes:
        Console().print(note, highlight=False, soft_wrap=True)
    Console().print(f"{written} change map(s) written to {cfg.output}", highlight=False)
    if problems:
        sys.exit(1)
