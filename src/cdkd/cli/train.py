"""``python -m cdkd.train``: train one stage (baseline or a CAR-partition teacher)."""

from __future__ import annotations

from omegaconf import DictConfig

from cdkd.cli.common import command


@command("train")
def main(cfg: DictConfig) -> float | None:
    """Train as configured; returns the optimised metric so Hydra sweepers can use it."""
    from cdkd.training.run import train

    results = train(cfg)
    value = results.get(cfg.optimized_metric)
    return float(value) if value is not None else None
