"""``python -m cdkd.predict``: change maps for folders of image pairs of any size."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.progress import track

from cdkd.cli.common import config_dir, report_errors
from cdkd.errors import DataError


def find_pairs(root: Path) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """Pairs ``(name, path_a, path_b)`` matched by file stem, and problems with unmatched files."""
    from cdkd.data.layout import DATE_FOLDERS, list_images
    from cdkd.files import natural_key

    for first, second, _ in DATE_FOLDERS:
        dir_a, dir_b = root / first, root / second
        if dir_a.is_dir() and dir_b.is_dir():
            break
    else:
        raise DataError(f"{root}: expected sub-folders A/ and B/ (or time1/ and time2/)")
    a, b = list_images(dir_a), list_images(dir_b)
    problems = [f"{a[n]}: no counterpart in {dir_b}" for n in sorted(a.keys() - b.keys())]
    problems += [f"{b[n]}: no counterpart in {dir_a}" for n in sorted(b.keys() - a.keys())]
    common = sorted(a.keys() & b.keys(), key=natural_key)
    return [(n, a[n], b[n]) for n in common], problems


def to_tensor(image: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``uint8 [H, W, 3]`` to a normalised ``[1, 3, H, W]`` float tensor."""
    x = torch.from_numpy(image).permute(2, 0, 1).float().unsqueeze(0)
    return (x - mean) / std


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="predict")
@report_errors
def main(cfg: DictConfig) -> None:
    """Write one 0/255 change PNG per readable pair; exit non-zero if any pair failed."""
    from cdkd.cli.eval import pick_device
    from cdkd.data.io import read_image, write_mask
    from cdkd.inference.evaluate import autocast_for
    from cdkd.inference.sliding import sliding_window_logits
    from cdkd.models import create_model

    device = pick_device(cfg.device)
    model = create_model(cfg.model.name, weights=cfg.weights, **dict(cfg.model.kwargs))
    model = model.to(device).eval()
    mean = torch.tensor(list(cfg.model.normalize.mean)).view(1, 3, 1, 1)
    std = torch.tensor(list(cfg.model.normalize.std)).view(1, 3, 1, 1)
    pairs, problems = find_pairs(Path(cfg.input))
    if not pairs and not problems:
        raise DataError(f"{cfg.input}: no image pairs found")
    out_dir = Path(cfg.output)
    written = 0
    for name, path_a, path_b in track(pairs, description="predicting", transient=True):
        try:
            img_a, img_b = read_image(path_a), read_image(path_b)
            if img_a.shape != img_b.shape:
                raise DataError(
                    f"{path_b}: size {img_b.shape[1]}x{img_b.shape[0]} differs from "
                    f"{path_a} ({img_a.shape[1]}x{img_a.shape[0]})"
                )
        except DataError as exc:
            problems.append(str(exc))
            continue
        x1 = to_tensor(img_a, mean, std).to(device)
        x2 = to_tensor(img_b, mean, std).to(device)
        with torch.inference_mode(), autocast_for(device):
            logits = sliding_window_logits(model, x1, x2, cfg.tile_size, cfg.overlap)
        write_mask(out_dir / f"{name}.png", model.predict(logits)[0].cpu().numpy())
        written += 1
    console = Console(stderr=True)
    for problem in problems:
        console.print(f"skipped: {problem}", highlight=False, soft_wrap=True)
    Console().print(f"{written} change map(s) written to {out_dir}")
    if problems:
        sys.exit(1)
