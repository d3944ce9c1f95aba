"""Training-step time of the MTKD student against the baseline, measured side by side.

For each model, a baseline module and a student module (three randomly initialised teachers,
CAR-routed) take optimizer steps on the same synthetic batch, alternating one step each so
that machine noise affects both alike. Prints one JSON line per model with the median step
times and their ratio. A student step is one student forward and backward plus at most one
teacher forward per sample, so the ratio should approach 4/3.

    python scripts/bench.py --models fc_siam_diff tinycd --size 128 --batch 8 --steps 30
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from cdkd.models import get_entry
from cdkd.training.distill import DistillationModule, route
from cdkd.training.module import ChangeDetectionModule

PARTITION = {"name": "three", "thresholds": [0.05, 0.2], "buckets": ["small", "medium", "large"]}
#: CAR of each sample in the benchmark batch (cycled): every teacher gets some samples.
CARS = (0.0, 0.01, 0.04, 0.1, 0.15, 0.3, 0.6, 1.0)


def loss_of(model: str) -> str:
    """The task loss matching the model's head."""
    return "ce" if get_entry(model).cls.out_channels == 2 else "bce"


def save_checkpoint(path: Path, model: str, bucket: str | None) -> str:
    """A cdkd checkpoint of a randomly initialised ``model`` (teacher of ``bucket``)."""
    module = ChangeDetectionModule(
        model=model, loss=loss_of(model), meta={"bucket": bucket, "partition": PARTITION}
    )
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return str(path)


def make_batch(batch: int, size: int, device: torch.device) -> dict[str, Any]:
    """Random images and labels whose CARs spread over the three partitions."""
    gen = torch.Generator().manual_seed(0)
    mask = torch.zeros(batch, size, size, dtype=torch.long)
    for i in range(batch):
        mask[i].view(-1)[: int(CARS[i % len(CARS)] * size * size)] = 1
    return {
        "image1": torch.randn(batch, 3, size, size, generator=gen).to(device),
        "image2": torch.randn(batch, 3, size, size, generator=gen).to(device),
        "mask": mask,
    }


def step(module: ChangeDetectionModule, optimizer: torch.optim.Optimizer, batch: dict) -> float:
    """One timed optimizer step (routing included for the student)."""
    device = batch["image1"].device
    start = time.perf_counter()
    batch = dict(batch)
    if isinstance(module, DistillationModule):
        batch["route_order"], batch["route_counts"] = route(batch["mask"], PARTITION["thresholds"])
        batch["route_order"] = batch["route_order"].to(device)
    batch["mask"] = batch["mask"].to(device)
    optimizer.zero_grad(set_to_none=True)
    loss = module.training_step(batch, 0)
    loss.backward()
    optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench_model(model: str, size: int, batch_size: int, steps: int, warmup: int) -> dict:
    """Median step times of baseline and student for one model."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        init = save_checkpoint(Path(tmp) / "origin.ckpt", model, None)
        teachers = {
            b: save_checkpoint(Path(tmp) / f"{b}.ckpt", model, b) for b in PARTITION["buckets"]
        }
        common = {"model": model, "loss": loss_of(model)}
        baseline = ChangeDetectionModule(**common).to(device).train()
        student = DistillationModule(
            init=init, teachers=teachers, distill_lambda=1e-3, partition=PARTITION, **common
        )
        student = student.to(device).train()
        for teacher in student.teachers:
            teacher.to(device)
    batch = make_batch(batch_size, size, device)
    times: dict[str, list[float]] = {"baseline": [], "student": []}
    optimizers = {
        "baseline": torch.optim.AdamW(baseline.parameters(), lr=1e-4),
        "student": torch.optim.AdamW(student.parameters(), lr=1e-4),
    }
    for i in range(warmup + steps):
        for name, module in (("baseline", baseline), ("student", student)):
            elapsed = step(module, optimizers[name], batch)
            if i >= warmup:
                times[name].append(elapsed)
    base, stud = statistics.median(times["baseline"]), statistics.median(times["student"])
    return {
        "bench": "train_step",
        "model": model,
        "size": size,
        "batch": batch_size,
        "steps": steps,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "baseline_step_s": round(base, 5),
        "student_step_s": round(stud, 5),
        "ratio": round(stud / base, 4),
    }


def main() -> None:
    """Parse the command line and print one JSON line per model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["fc_siam_diff", "tinycd"])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny run for the test suite")
    args = parser.parse_args()
    if args.smoke:
        args.size, args.batch, args.steps, args.warmup = 32, 4, 2, 1
    warnings.filterwarnings("ignore", message=".*self.log.*")
    for model in args.models:
        print(json.dumps(bench_model(model, args.size, args.batch, args.steps, args.warmup)))


if __name__ == "__main__":
    main()
