"""``python -m cdkd.predict``: change maps for image pairs and GeoTIFF scenes of any size.

``input=DIR`` predicts every pair of ``DIR/A`` and ``DIR/B`` into ``output=DIR``;
``image1=PATH image2=PATH output=PATH`` predicts one pair. Georeferenced TIFF pairs are read
and written window by window (:mod:`cdkd.inference.geotiff`) and give a GeoTIFF on the input
grid; other images are read whole, tiled through :mod:`cdkd.inference.sliding`, and give a
0/255 PNG.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.progress import Progress, TaskID

from cdkd.cli.common import command
from cdkd.errors import ConfigError, DataError
from cdkd.inference.geotiff import TIFF_SUFFIXES, SceneOptions
from cdkd.models import ChangeModel


@dataclass(frozen=True)
class Job:
    """One pair to predict and where its change map goes."""

    name: str
    image1: Path
    image2: Path
    output: Path
    scene: bool


def plan_jobs(cfg: DictConfig) -> tuple[list[Job], list[str]]:
    """The pairs named by ``input=DIR`` or by ``image1``/``image2``, and unmatched files.

    A pair is a scene when either file is a georeferenced TIFF; its map is ``<name>.tif``,
    otherwise ``<name>.png``. With explicit paths, ``output`` is the map's file name.
    """
    from cdkd.data.layout import find_pairs
    from cdkd.inference.geotiff import is_geotiff

    explicit = cfg.image1 is not None or cfg.image2 is not None
    if explicit == (cfg.input is not None) or (explicit and None in (cfg.image1, cfg.image2)):
        raise ConfigError("give either input=DIR or both image1=PATH and image2=PATH")
    if explicit:
        image1, image2, output = Path(cfg.image1), Path(cfg.image2), Path(cfg.output)
        for path in (image1, image2):
            if not path.is_file():
                raise DataError(f"{path}: file not found")
        scene = is_geotiff(image1) or is_geotiff(image2)
        allowed = TIFF_SUFFIXES if scene else (".png",)
        if output.suffix.lower() not in allowed:
            kind = "a GeoTIFF scene" if scene else "an image pair"
            raise ConfigError(
                f"output={output}: the map of {kind} is written as {' or '.join(allowed)}"
            )
        return [Job(output.stem, image1, image2, output, scene)], []
    pairs, problems = find_pairs(Path(cfg.input))
    if not pairs and not problems:
        raise DataError(f"{cfg.input}: no image pairs found")
    out_dir = Path(cfg.output)
    jobs = []
    for name, path_a, path_b in pairs:
        scene = is_geotiff(path_a) or is_geotiff(path_b)
        jobs.append(
            Job(name, path_a, path_b, out_dir / f"{name}{'.tif' if scene else '.png'}", scene)
        )
    return jobs, problems


def scene_options(cfg: DictConfig) -> SceneOptions:
    """The tiling, band, scaling and output settings of ``cfg``."""
    from cdkd.inference.geotiff import Scaling

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


def predict_image_pair(
    model: ChangeModel,
    job: Job,
    mean: torch.Tensor,
    std: torch.Tensor,
    options: SceneOptions,
    device: torch.device,
    progress: Progress,
    task: TaskID,
) -> None:
    """Write the 0/255 PNG change map of a pair of ordinary images (read whole, tiled)."""
    from cdkd.data.io import check_same_size, read_image, write_mask
    from cdkd.inference.evaluate import autocast_for
    from cdkd.inference.sliding import TileGrid, sliding_window_logits
    from cdkd.ops import normalise_image

    img_a, img_b = read_image(job.image1), read_image(job.image2)
    check_same_size(job.image2, img_b, job.image1, img_a)
    progress.reset(task, total=len(TileGrid(*img_a.shape[:2], options.tile_size, options.overlap)))
    x1 = normalise_image(img_a, mean, std).unsqueeze(0).to(device)
    x2 = normalise_image(img_b, mean, std).unsqueeze(0).to(device)
    with torch.inference_mode(), autocast_for(device):
        logits = sliding_window_logits(
            model,
            x1,
            x2,
            options.tile_size,
            options.overlap,
            batch_size=options.batch_size,
            advance=lambda n: progress.advance(task, n),
        )
    write_mask(job.output, model.predict(logits)[0].cpu().numpy())


def predict_scene_pair(
    model: ChangeModel,
    job: Job,
    mean: list[float],
    std: list[float],
    options: SceneOptions,
    device: torch.device,
    progress: Progress,
    task: TaskID,
) -> str:
    """Write the GeoTIFF change map of a scene pair; returns a one-line summary."""
    from cdkd.inference.evaluate import autocast_for
    from cdkd.inference.geotiff import predict_scene, scene_windows

    progress.reset(task, total=scene_windows(job.image1, options))
    with autocast_for(device):
        result = predict_scene(
            model,
            job.image1,
            job.image2,
            job.output,
            mean,
            std,
            options,
            device,
            advance=lambda n: progress.advance(task, n),
        )
    share = result.changed_pixels / max(result.valid_pixels, 1)
    overlay = f", overlay {result.overlay}" if result.overlay else ""
    return (
        f"{result.output}: {share:.2%} of {result.valid_pixels} valid pixels changed, "
        f"nodata={result.nodata}{overlay}"
    )


@command("predict")
def main(cfg: DictConfig) -> None:
    """Write one change map per readable pair; exit non-zero if any pair failed."""
    from cdkd.inference.evaluate import pick_device
    from cdkd.models import create_model

    options = scene_options(cfg)
    jobs, problems = plan_jobs(cfg)
    device = pick_device(cfg.device)
    model = create_model(cfg.model.name, weights=cfg.weights, **dict(cfg.model.kwargs))
    model = model.to(device).eval()
    mean, std = list(cfg.model.normalize.mean), list(cfg.model.normalize.std)
    mean_t, std_t = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    notes: list[str] = []
    written = 0
    with Progress(transient=True) as progress:
        pairs = progress.add_task("pairs", total=len(jobs))
        windows = progress.add_task("windows", total=None)
        for job in jobs:
            try:
                if job.scene:
                    notes.append(
                        predict_scene_pair(
                            model, job, mean, std, options, device, progress, windows
                        )
                    )
                else:
                    predict_image_pair(
                        model, job, mean_t, std_t, options, device, progress, windows
                    )
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
