"""The paper's real-data path end to end on generated data, in minutes on a CPU.

Usage::

    python scripts/paper_dryrun.py [override ...]      # or: make paper-dryrun

Runs ``python -m cdkd.pipeline experiment=paper_dryrun [override ...]``: JL1-CD's configuration
(validation = the first training pairs, pretrained backbone from a local file, the lambda grid
selected on validation) on a dataset generated in JL1-CD's layout. When ``model.backbone_weights``
names files that do not exist, a stand-in is written there first: the model's pretrained parts
with random values, in the state-dict format timm and smp publish. It proves the local-file path,
not the weights; pass the real file (``python -m cdkd.weights fetch models=[changer_b0]``) to
start from ImageNet.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from cdkd.cli import pipeline
from cdkd.cli.common import config_dir
from cdkd.files import atomic_path
from cdkd.models import create_model
from cdkd.models.pretrained import part_files, parts_of

log = logging.getLogger("paper_dryrun")

EXPERIMENT = "experiment=paper_dryrun"


def write_stand_in_weights(model: str, weights: str | Mapping[str, str]) -> list[Path]:
    """Write each missing file of ``weights`` (``model.backbone_weights``) with random values.

    Every file holds the state dict of one pretrained part of a randomly initialised ``model``;
    files that exist are left alone. Returns the files written.
    """
    files = part_files(model, weights)
    missing = {name: Path(path) for name, path in files.items() if path and not Path(path).exists()}
    if not missing:
        return []
    network = create_model(model)
    for part in parts_of(model):
        if part.name not in missing:
            continue
        module = network.get_submodule(part.module) if part.module else network
        state = {key: value.contiguous() for key, value in module.state_dict().items()}
        with atomic_path(missing[part.name]) as tmp:
            torch.save(state, tmp)
    return list(missing.values())


def main(argv: list[str] | None = None) -> None:
    """Write stand-in weights where needed, then run the pipeline with the dry-run experiment."""
    overrides = [EXPERIMENT, *(sys.argv[1:] if argv is None else argv)]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides)
    weights = cfg.model.backbone_weights
    if weights is not None:
        plain = weights if isinstance(weights, str) else dict(weights)
        for path in write_stand_in_weights(cfg.model.name, plain):
            print(f"stand-in backbone weights (random values) written to {path}")
    pipeline.main(overrides)


if __name__ == "__main__":
    main()
