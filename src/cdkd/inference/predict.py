"""Change maps of image pairs on disk: which pairs to predict, and one map per pair.

A pair is a *scene* when either file is a georeferenced TIFF: it is read and written window by
window (:mod:`cdkd.inference.geotiff`) and gives a GeoTIFF on the input grid. Other images are
read whole, tiled through :mod:`cdkd.inference.sliding`, and give a 0/255 PNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from cdkd.data.io import check_same_size, read_image, write_mask
from cdkd.data.layout import find_pairs
from cdkd.errors import ConfigError, DataError
from cdkd.inference.evaluate import autocast_for
from cdkd.inference.geotiff import SceneOptions, SceneResult, predict_scene, scene_windows
from cdkd.inference.raster import TIFF_SUFFIXES, is_geotiff
from cdkd.inference.sliding import TileGrid, sliding_window_logits
from cdkd.models import ChangeModel
from cdkd.ops import normalise_image


@dataclass(frozen=True)
class Job:
    """One pair to predict and where its change map goes."""

    name: str
    image1: Path
    image2: Path
    output: Path
    scene: bool


class WindowProgress(Protocol):
    """Told how many windows a pair has, then how many of them finished (a progress bar)."""

    def start(self, total: int) -> None: ...

    def advance(self, count: int) -> None: ...


def plan_jobs(
    input_dir: str | Path | None,
    image1: str | Path | None,
    image2: str | Path | None,
    output: str | Path,
) -> tuple[list[Job], list[str]]:
    """The pairs of ``input_dir`` (``A``/``B`` folders) or ``image1``/``image2``; unmatched files.

    A scene's map is ``<name>.tif``, another pair's ``<name>.png``, in the folder ``output``.
    With explicit paths, ``output`` is the map's file name.
    """
    if input_dir is None and image1 is not None and image2 is not None:
        return [_explicit_job(Path(image1), Path(image2), Path(output))], []
    if input_dir is None or image1 is not None or image2 is not None:
        raise ConfigError("give either input=DIR or both image1=PATH and image2=PATH")
    pairs, problems = find_pairs(Path(input_dir))
    if not pairs and not problems:
        raise DataError(f"{input_dir}: no image pairs found")
    jobs = []
    for name, path_a, path_b in pairs:
        scene = is_geotiff(path_a) or is_geotiff(path_b)
        suffix = ".tif" if scene else ".png"
        jobs.append(Job(name, path_a, path_b, Path(output) / f"{name}{suffix}", scene))
    return jobs, problems


def _explicit_job(image1: Path, image2: Path, output: Path) -> Job:
    """The one job of two named files; ``output`` must have the suffix its kind is written with."""
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
    return Job(output.stem, image1, image2, output, scene)


def predict_pair(
    model: ChangeModel,
    job: Job,
    mean: Sequence[float],
    std: Sequence[float],
    options: SceneOptions,
    device: torch.device,
    progress: WindowProgress | None = None,
) -> SceneResult | None:
    """Write the change map of ``job``; what a scene's map holds, ``None`` for other images.

    A scene goes through :func:`predict_scene`; a pair of ordinary images is read whole, tiled
    and written as a 0/255 PNG. ``mean`` and ``std`` are the model's normalisation in 0-255
    units; ``model`` is in eval mode on ``device``.
    """
    advance = progress.advance if progress is not None else None
    if job.scene:
        if progress is not None:
            progress.start(scene_windows(job.image1, options))
        with autocast_for(device):
            return predict_scene(
                model, job.image1, job.image2, job.output, mean, std, options, device, advance
            )
    img_a, img_b = read_image(job.image1), read_image(job.image2)
    check_same_size(job.image2, img_b, job.image1, img_a)
    if progress is not None:
        height, width = img_a.shape[:2]
        progress.start(len(TileGrid(height, width, options.tile_size, options.overlap)))
    mean_t = torch.tensor(list(mean), dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(list(std), dtype=torch.float32).view(3, 1, 1)
    x1 = normalise_image(img_a, mean_t, std_t).unsqueeze(0).to(device)
    x2 = normalise_image(img_b, mean_t, std_t).unsqueeze(0).to(device)
    with torch.inference_mode(), autocast_for(device):
        logits = sliding_window_logits(
            model,
            x1,
            x2,
            options.tile_size,
            options.overlap,
            batch_size=options.batch_size,
            advance=advance,
        )
    write_mask(job.output, model.predict(logits)[0].cpu().numpy())
    return None
