"""Speed of training, evaluation, data loading and inference, each measured side by side.

Every benchmark alternates its contenders one call at a time in a single process, so machine
noise affects them alike, and prints one JSON line with the median times and their ratio:

* ``train_step``: a baseline optimizer step against a student step (three randomly
  initialised, CAR-routed teachers). A student step adds at most one teacher forward per
  sample, so the ratio should approach 4/3.
* ``eval``: an evaluation step (forward, prediction) with and without the metric update
  and the per-image CAR; the ratio is the cost of scoring.
* ``inference``: forward throughput of the student network against the baseline network
  (the same architecture, so ~1.0) and of O-P inference (M_O plus one teacher per image, ~2x).
* ``decode``: Pillow against OpenCV decoding of a 512x512 RGB PNG and of a 0/255 label PNG.
* ``data``: decoded, augmented and normalised pairs per second of one loader worker (the
  dataset's ``__getitem__`` in this process) from PNG files written to a temporary folder.

    python scripts/bench.py --models fc_siam_diff tinycd --size 128 --batch 8 --steps 30
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from cdkd.data.dataset import ChangeDetectionDataset
from cdkd.data.io import read_image, read_mask
from cdkd.data.layout import Sample
from cdkd.data.transforms import build_augmentation
from cdkd.inference.evaluate import autocast_for
from cdkd.inference.origin_partition import OriginPartition
from cdkd.metrics import ChangeMetrics
from cdkd.models import create_model, get_entry
from cdkd.ops import resize_logits
from cdkd.partition import PartitionScheme, change_area_ratio
from cdkd.training.distill import DistillationModule
from cdkd.training.module import ChangeDetectionModule
from cdkd.training.routing import route

PARTITION = {"name": "three", "thresholds": [0.05, 0.2], "buckets": ["small", "medium", "large"]}
#: CAR of each sample in the benchmark batch (cycled): every teacher gets some samples.
CARS = (0.0, 0.01, 0.04, 0.1, 0.15, 0.3, 0.6, 1.0)
BENCHES = ("train_step", "eval", "inference", "decode", "data")


def significant(value: float, digits: int = 6) -> float:
    """``value`` to ``digits`` significant figures: ratios recomputed from the reported rates
    stay within 0.01 % however slow the machine (rounding to decimals does not)."""
    return float(f"{value:.{digits}g}")


def loss_of(model: str) -> str:
    """The task loss matching the model's head."""
    return "ce" if get_entry(model).cls.out_channels == 2 else "bce"


def device_name(device: torch.device) -> str:
    """The accelerator's name, or ``cpu``."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def sync(device: torch.device) -> None:
    """Wait for queued device work, so that a timer sees all of it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    contenders: dict[str, Callable[[], Any]], repeats: int, warmup: int
) -> dict[str, float]:
    """Median seconds per call of each contender, called in turn ``warmup + repeats`` times."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for i in range(warmup + repeats):
        for name, call in contenders.items():
            start = time.perf_counter()
            call()
            elapsed = time.perf_counter() - start
            if i >= warmup:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


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


def train_step(
    module: ChangeDetectionModule, optimizer: torch.optim.Optimizer, batch: dict
) -> None:
    """One optimizer step (routing on the host included for the student), as in training."""
    device = batch["image1"].device
    batch = dict(batch)
    if isinstance(module, DistillationModule):
        batch["route_order"], batch["route_counts"] = route(batch["mask"], PARTITION["thresholds"])
        batch["route_order"] = batch["route_order"].to(device, non_blocking=True)
    batch["mask"] = batch["mask"].to(device, non_blocking=True)
    optimizer.zero_grad(set_to_none=True)
    with autocast_for(device):
        loss = module.training_step(batch, 0)
    loss.backward()
    optimizer.step()
    sync(device)


def bench_train_step(model: str, args: argparse.Namespace, device: torch.device) -> dict:
    """Median step times of baseline and student for one model."""
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
    batch = make_batch(args.batch, args.size, device)
    opt_base = torch.optim.AdamW(baseline.parameters(), lr=1e-4)
    opt_stud = torch.optim.AdamW(student.parameters(), lr=1e-4)
    times = interleaved(
        {
            "baseline": lambda: train_step(baseline, opt_base, batch),
            "student": lambda: train_step(student, opt_stud, batch),
        },
        args.steps,
        args.warmup,
    )
    return {
        "baseline_step_s": significant(times["baseline"]),
        "student_step_s": significant(times["student"]),
        "ratio": significant(times["student"] / times["baseline"]),
    }


@torch.inference_mode()
def eval_step(net: torch.nn.Module, batch: dict, metrics: ChangeMetrics | None) -> None:
    """The body of the evaluation loop, with or without scoring."""
    device = batch["image1"].device
    mask = batch["mask"]
    with autocast_for(device):
        logits = net(batch["image1"], batch["image2"])
    pred = net.predict(resize_logits(logits.float(), tuple(mask.shape[-2:])))
    if metrics is not None:
        metrics.update(pred, mask)
        change_area_ratio(mask)
    sync(device)


def bench_eval(model: str, args: argparse.Namespace, device: torch.device) -> dict:
    """Evaluation step time with and without the metrics."""
    net = create_model(model).to(device).eval()
    batch = make_batch(args.batch, args.size, device)
    batch["mask"] = batch["mask"].to(device)
    metrics = ChangeMetrics(sync_on_compute=False).to(device)
    times = interleaved(
        {
            "plain": lambda: eval_step(net, batch, None),
            "metrics": lambda: eval_step(net, batch, metrics),
        },
        args.steps,
        args.warmup,
    )
    metrics.compute()
    return {
        "plain_step_s": significant(times["plain"]),
        "metrics_step_s": significant(times["metrics"]),
        "plain_pairs_per_s": significant(args.batch / times["plain"]),
        "metrics_pairs_per_s": significant(args.batch / times["metrics"]),
        "ratio": significant(times["metrics"] / times["plain"]),
    }


@torch.inference_mode()
def forward(net: torch.nn.Module, batch: dict) -> None:
    """One inference forward pass, synchronised."""
    with autocast_for(batch["image1"].device):
        net(batch["image1"], batch["image2"])
    sync(batch["image1"].device)


def bench_inference(model: str, args: argparse.Namespace, device: torch.device) -> dict:
    """Inference throughput of the student and of O-P, relative to the baseline network."""
    scheme = PartitionScheme.create(
        PARTITION["name"], PARTITION["thresholds"], PARTITION["buckets"]
    )
    baseline = create_model(model).to(device).eval()
    student = create_model(model).to(device).eval()
    teachers = [create_model(model) for _ in scheme.buckets]
    op = OriginPartition(create_model(model), teachers, scheme).to(device).eval()
    batch = make_batch(args.batch, args.size, device)
    times = interleaved(
        {
            "baseline": lambda: forward(baseline, batch),
            "student": lambda: forward(student, batch),
            "op": lambda: forward(op, batch),
        },
        args.steps,
        args.warmup,
    )
    return {
        "baseline_pairs_per_s": significant(args.batch / times["baseline"]),
        "student_pairs_per_s": significant(args.batch / times["student"]),
        "op_pairs_per_s": significant(args.batch / times["op"]),
        "student_ratio": significant(times["student"] / times["baseline"]),
        "op_ratio": significant(times["op"] / times["baseline"]),
    }


def write_pairs(folder: Path, count: int, size: int) -> list[Sample]:
    """``count`` PNG pairs of ``size`` pixels with 0/255 labels, textured like aerial images."""
    rng = np.random.default_rng(0)
    samples = []
    for sub in ("A", "B", "label"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        name = f"{i}.png"
        for sub in ("A", "B"):
            coarse = Image.fromarray(rng.integers(0, 256, (size // 8, size // 8, 3), np.uint8))
            smooth = np.asarray(coarse.resize((size, size), Image.BILINEAR), dtype=np.int16)
            noisy = smooth + rng.integers(-6, 7, smooth.shape, dtype=np.int16)
            Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(folder / sub / name)
        label = np.zeros((size, size), np.uint8)
        label[: int(size * CARS[i % len(CARS)])] = 255
        Image.fromarray(label).save(folder / "label" / name)
        samples.append(
            Sample(name, folder / "A" / name, folder / "B" / name, folder / "label" / name)
        )
    return samples


def decode_opencv_rgb(path: Path) -> np.ndarray:
    """OpenCV's decoding of an RGB image, in RGB order."""
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def bench_decode(samples: list[Sample], args: argparse.Namespace) -> dict:
    """Pillow (``cdkd.data.io``) against OpenCV on the same files, one thread each."""
    cv2.setNumThreads(1)
    image, label = samples[0].image1, samples[0].label
    if not np.array_equal(read_image(image), decode_opencv_rgb(image)):
        raise RuntimeError(f"{image}: OpenCV and Pillow decode differently")
    times = interleaved(
        {
            "pillow_image": lambda: read_image(image),
            "opencv_image": lambda: decode_opencv_rgb(image),
            "pillow_label": lambda: read_mask(label),
            "opencv_label": lambda: cv2.imread(str(label), cv2.IMREAD_UNCHANGED) >= 128,
        },
        args.steps,
        args.warmup,
    )
    return {
        **{f"{name}_ms": significant(1000 * t) for name, t in times.items()},
        "image_ratio": significant(times["opencv_image"] / times["pillow_image"]),
        "label_ratio": significant(times["opencv_label"] / times["pillow_label"]),
    }


def bench_data(samples: list[Sample], args: argparse.Namespace) -> dict:
    """Pairs per second of one worker, with the training and the evaluation transform."""
    train = ChangeDetectionDataset(samples, augment=build_augmentation("standard"))
    plain = ChangeDetectionDataset(samples)
    position = {"i": 0}

    def load(dataset: ChangeDetectionDataset) -> None:
        dataset[position["i"] % len(dataset)]
        position["i"] += 1

    times = interleaved(
        {"augmented": lambda: load(train), "decoded": lambda: load(plain)},
        args.steps,
        args.warmup,
    )
    return {
        "augmented_pairs_per_s_per_worker": significant(1 / times["augmented"]),
        "decoded_pairs_per_s_per_worker": significant(1 / times["decoded"]),
        "augmented_pair_ms": significant(1000 * times["augmented"]),
        "decoded_pair_ms": significant(1000 * times["decoded"]),
    }


def main() -> None:
    """Parse the command line and print one JSON line per benchmark and model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["fc_siam_diff", "tinycd"])
    parser.add_argument("--bench", nargs="+", choices=BENCHES, default=list(BENCHES))
    parser.add_argument("--size", type=int, default=128, help="model benchmarks' image size")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30, help="timed repeats per contender")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--data-size", type=int, default=512, help="size of the PNG pairs")
    parser.add_argument("--data-pairs", type=int, default=8, help="PNG pairs written")
    parser.add_argument("--smoke", action="store_true", help="tiny run for the test suite")
    args = parser.parse_args()
    if args.smoke:
        args.size, args.batch, args.steps, args.warmup = 32, 2, 1, 0
        args.data_size, args.data_pairs = 64, 2
    warnings.filterwarnings("ignore", message=".*self.log.*")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    machine = {"device": device_name(device), "threads": torch.get_num_threads()}
    model_benches = {
        "train_step": bench_train_step,
        "eval": bench_eval,
        "inference": bench_inference,
    }
    for model in args.models:
        for name, bench in model_benches.items():
            if name in args.bench:
                shape = {"size": args.size, "batch": args.batch, "steps": args.steps}
                result = bench(model, args, device)
                print(json.dumps({"bench": name, "model": model, **shape, **machine, **result}))
    file_benches = {"decode": bench_decode, "data": bench_data}
    if any(name in args.bench for name in file_benches):
        with tempfile.TemporaryDirectory() as tmp:
            samples = write_pairs(Path(tmp), args.data_pairs, args.data_size)
            for name, bench in file_benches.items():
                if name in args.bench:
                    shape = {"size": args.data_size, "steps": args.steps}
                    result = bench(samples, args)
                    print(json.dumps({"bench": name, **shape, **machine, **result}), flush=True)


if __name__ == "__main__":
    main()
