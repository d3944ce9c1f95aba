"""The LightningDataModule for every dataset in the ``ROOT/{split}/{A,B,label}`` layout."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from lightning import LightningDataModule
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, default_collate

from cdkd.data.car_index import CarIndex, build_car_index, cache_path
from cdkd.data.dataset import IMAGENET_MEAN, IMAGENET_STD, ChangeDetectionDataset, pad_collate
from cdkd.data.io import check_label_threshold
from cdkd.data.layout import Sample, discover_split, require_root
from cdkd.data.sampler import EpochShuffleSampler, ResumableLoader
from cdkd.data.transforms import build_augmentation
from cdkd.errors import ConfigError, DataError
from cdkd.partition import PartitionScheme

log = logging.getLogger(__name__)

#: The logical splits of a dataset (each may live in a folder of another name: ``data.splits``).
Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = get_args(Split)
_STAGE_SPLITS: dict[str | None, tuple[Split, ...]] = {
    "fit": ("train", "val"),
    "validate": ("val",),
    "test": ("test",),
    "predict": ("test",),
    None: SPLITS,
}


@dataclass(frozen=True)
class _Split:
    """The pairs of one logical split and their CAR index rows, in the same order."""

    folder: Path
    samples: list[Sample]
    index: CarIndex


class ChangeDataModule(LightningDataModule):
    """Train/val/test loaders for a change-detection dataset, optionally one CAR partition of it.

    Args:
        root: Dataset root holding ``{train,val,test}/{A,B,label}`` (or ``time1/time2/label``).
        name: Short dataset name (``jl1cd``, ``sysucd``, ``synthetic``, ``folder``), used in
            messages and run paths.
        splits: Folder name of each logical split (``train``, ``val``, ``test``).
        val_from_train: When the val folder is missing, hold out this many pairs from the start
            of the training folder (natural order) as validation; 0 makes a missing val an error.
        batch_size: Training batch size, global: under DDP each of the trainer's processes
            takes ``batch_size / world_size`` (see :func:`process_batch_size`).
        eval_batch_size: Batch size of evaluation loaders (default: ``batch_size``), global
            too: each process takes its share, rounded up.
        num_workers: DataLoader worker processes, or ``"auto"`` for
            :func:`auto_num_workers` (one fewer than this process's share of the CPUs, at most 8).
        mean: Per-channel normalisation mean, RGB, 0-255 units.
        std: Per-channel normalisation standard deviation, RGB, 0-255 units.
        augment: Training augmentation recipe: ``standard``, ``changer`` or ``none``.
        crop_size: Random square training crop (``None``: whole images).
        partition: CAR partition scheme ``{name, thresholds, buckets}``.
        bucket: Restrict train and val to this bucket of ``partition`` (test never is).
        cache_dir: Where CAR indexes are cached (default ``ROOT/.cdkd_cache``).
        synthetic: ``{counts, size, seed[, naming]}``: generate a synthetic dataset at ``root``
            first.
        pin_memory: Pin batches in page-locked memory (default: when CUDA is available).
        persistent_workers: Keep workers between epochs (default: when ``num_workers > 0``).
        seed: Seed of the training order and augmentation (with the epoch and the item's
            position: see :mod:`cdkd.data.sampler`).
        label_threshold: ``None`` reads labels strictly (0/255 or 0/1, anything else is an
            error); an integer T in 1..255 reads values ``>= T`` as change, the rest as
            unchanged, colour labels through their grayscale (for JPEG-saved labels: 128).
    """

    def __init__(
        self,
        root: str,
        name: str = "folder",
        splits: Mapping[str, str] | None = None,
        val_from_train: int = 0,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int | str = 0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        augment: str = "standard",
        crop_size: int | None = None,
        partition: Mapping[str, Any] | None = None,
        bucket: str | None = None,
        cache_dir: str | None = None,
        synthetic: Mapping[str, Any] | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool | None = None,
        seed: int = 0,
        label_threshold: int | None = None,
    ) -> None:
        super().__init__()
        self.root = Path(root).expanduser()
        self.name: str = name
        self.splits = {split: split for split in SPLITS} | dict(splits or {})
        unknown = sorted(set(self.splits) - set(SPLITS))
        if unknown:
            raise ConfigError(f"data.splits: unknown split(s) {unknown}; use {list(SPLITS)}")
        for key, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value is not None and value < 1:
                raise ConfigError(f"data.{key} must be at least 1, got {value}")
        if val_from_train < 0:
            raise ConfigError(f"data.val_from_train must be >= 0, got {val_from_train}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ConfigError(f"data.mean/std need 3 values with std > 0, got {mean} / {std}")
        self.val_from_train = val_from_train
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        num_workers = resolve_num_workers(num_workers)
        self.num_workers = num_workers
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.train_augment = build_augmentation(augment, crop_size)
        self.crop_size = crop_size
        self.scheme = _scheme(partition, bucket)
        self.bucket = bucket
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else self.root / ".cdkd_cache"
        self.synthetic = dict(synthetic) if synthetic else None
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        persistent = num_workers > 0 if persistent_workers is None else persistent_workers
        self.persistent_workers = persistent and num_workers > 0
        self.seed = seed
        self.label_threshold = check_label_threshold(label_threshold)
        self._splits: dict[Split, _Split] = {}
        self._folders: dict[Path, tuple[list[Sample], CarIndex]] = {}

    def prepare_data(self) -> None:
        """Generate the synthetic dataset at ``root`` when configured (idempotent)."""
        if self.synthetic is None:
            return
        from cdkd.data.synthetic import generate_dataset

        generate_dataset(
            self.root,
            counts={str(k): v for k, v in dict(self.synthetic["counts"]).items()},
            size=self.synthetic.get("size", 64),
            seed=self.synthetic.get("seed", 0),
            naming=self.synthetic.get("naming", "padded"),
        )

    def setup(self, stage: str | None = None) -> None:
        """Validate the splits that ``stage`` needs and build (or read) their CAR indexes."""
        if self.synthetic is not None:
            self.prepare_data()
        for split in _STAGE_SPLITS.get(stage, SPLITS):
            self._split(split)
        if stage in ("fit", None) and self.crop_size is None:
            train = self._split("train")
            if len(train.index.sizes) > 1:
                shown = ", ".join(f"{h}x{w}" for h, w in sorted(train.index.sizes)[:4])
                raise DataError(
                    f"{train.folder}: training images have different sizes ({shown}); "
                    "set data.crop_size to train on crops"
                )

    def train_dataloader(self) -> ResumableLoader:
        """Shuffled, augmented training batches of equal-size images, sharded across ranks.

        Each of the trainer's processes takes its share of ``batch_size``. Checkpoints record
        the loader's position, so a run resumed from the middle of an epoch continues with the
        batches an uninterrupted run would have trained on.
        """
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        return self._train_loader(world, rank)

    def train_batches(self, world_size: int = 1) -> int:
        """Training batches of one epoch on each of ``world_size`` processes."""
        return len(self._train_loader(world_size, 0))

    def _train_loader(self, world_size: int, rank: int) -> ResumableLoader:
        """The training loader of process ``rank`` of ``world_size``."""
        split = self._split("train")
        dataset = ChangeDetectionDataset(
            split.samples,
            self.mean,
            self.std,
            self.train_augment,
            seed=self.seed,
            label_threshold=self.label_threshold,
        )
        batch_size = process_batch_size(self.batch_size, world_size)
        sampler = EpochShuffleSampler(dataset, num_replicas=world_size, rank=rank, seed=self.seed)
        return ResumableLoader(
            dataset,
            sampler=sampler,
            batch_size=batch_size,
            drop_last=len(sampler) > batch_size,
            collate_fn=default_collate,
            **self._loader_options(),
        )

    def val_dataloader(self) -> DataLoader[dict[str, Any]]:
        """Validation batches, no augmentation, each image on exactly one rank under DDP."""
        return self.dataloader("val", shard=True)

    def test_dataloader(self) -> DataLoader[dict[str, Any]]:
        """Test batches, no augmentation, never restricted to a CAR partition; sharded as val."""
        return self.dataloader("test", shard=True)

    def dataloader(self, split: str, shard: bool = False) -> DataLoader[dict[str, Any]]:
        """Evaluation loader of any split: dataset order, no augmentation, padded batches.

        Batches carry ``size`` (int64 ``[B, 2]``), the original height and width of each item.
        Each of the trainer's processes takes its share of ``eval_batch_size`` (rounded up),
        whether it evaluates a shard or, as after training, the whole split. With ``shard``
        inside an initialised multi-process group, each rank gets every ``world_size``-th image
        and no image is repeated to even the shares out (Lightning's default sampler would
        repeat some, counting them twice in the gathered metrics).
        """
        data = self._split(split)
        dataset = ChangeDetectionDataset(
            data.samples, self.mean, self.std, label_threshold=self.label_threshold
        )
        sampler = None
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if shard and distributed and torch.distributed.get_world_size() > 1:
            sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)
        world = self.trainer.world_size if self.trainer else 1
        return DataLoader(
            dataset,
            batch_size=-(-self.eval_batch_size // world),
            shuffle=False,
            sampler=sampler,
            collate_fn=pad_collate,
            **self._loader_options(),
        )

    def index(self, split: str) -> CarIndex:
        """CAR index rows of ``split`` in dataset order (after any partition restriction)."""
        return self._split(split).index

    def index_checksum(self, split: str) -> str:
        """SHA-256 of the rows of ``split``, for provenance records."""
        return self.index(split).checksum

    def samples(self, split: str) -> list[Sample]:
        """File paths of the pairs of ``split`` in dataset order."""
        return list(self._split(split).samples)

    def _loader_options(self) -> dict[str, Any]:
        return {
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory,
            "persistent_workers": self.persistent_workers,
        }

    def _split(self, split: str) -> _Split:
        """The pairs of a logical split, built on first use."""
        if split not in SPLITS:
            raise ConfigError(f"unknown split '{split}': use one of {list(SPLITS)}")
        if split not in self._splits:
            self._splits[split] = self._build_split(split)
        return self._splits[split]

    def _build_split(self, split: Split) -> _Split:
        root = require_root(self.root, self.name)
        folder = root / self.splits[split]
        positions: Sequence[int] | None = None
        has_val = (root / self.splits["val"]).is_dir()
        if split in ("train", "val") and not has_val:
            folder, positions = self._held_out(root, split)
        elif split == "val" and self.val_from_train:
            log.warning(
                "%s exists: using it for validation, not the first %d training pairs",
                root / self.splits["val"],
                self.val_from_train,
            )
        samples, index = self._folder(folder)
        if positions is not None:
            samples, index = [samples[p] for p in positions], index.subset(positions)
        if split != "test" and self.scheme is not None and self.bucket is not None:
            chosen = index.positions_in(self.scheme, self.bucket)
            if not chosen:
                raise DataError(
                    f"{folder}: CAR partition '{self.bucket}' of split '{split}' is empty "
                    f"(partition '{self.scheme.name}', thresholds {list(self.scheme.thresholds)})"
                )
            samples, index = [samples[p] for p in chosen], index.subset(chosen)
        log.info("%s %s: %d pairs from %s", self.name, split, len(samples), folder)
        if self.label_threshold is not None:
            log.info(
                "%s %s: %d of %d labels have values other than 0/255 and 0/1, binarised at >= %d",
                self.name,
                split,
                len(index.thresholded),
                len(index),
                self.label_threshold,
            )
        return _Split(folder=folder, samples=samples, index=index)

    def _held_out(self, root: Path, split: Split) -> tuple[Path, list[int]]:
        """Train folder and positions of ``split`` when val is taken from the head of train."""
        val_dir, train_dir = root / self.splits["val"], root / self.splits["train"]
        n_val = self.val_from_train
        if n_val == 0:
            raise DataError(
                f"{val_dir}: validation split not found; add it or set data.val_from_train=N "
                "to validate on the first N training pairs"
            )
        total = len(self._folder(train_dir)[0])
        if n_val >= total:
            raise DataError(
                f"{train_dir}: val_from_train={n_val} leaves no training pairs ({total} in total)"
            )
        return train_dir, list(range(n_val)) if split == "val" else list(range(n_val, total))

    def _folder(self, folder: Path) -> tuple[list[Sample], CarIndex]:
        """Pairs and CAR index of one split folder, validated once per data module."""
        if folder not in self._folders:
            samples = discover_split(folder)
            index = build_car_index(
                samples,
                cache_file=cache_path(self.cache_dir, folder),
                description=f"CAR index {self.name}/{folder.name}",
                label_threshold=self.label_threshold,
            )
            self._folders[folder] = (samples, index)
        return self._folders[folder]


def process_batch_size(batch_size: int, world_size: int) -> int:
    """Each process's share of the global ``batch_size`` when ``world_size`` processes train.

    ``data.batch_size`` is the batch of one optimizer step whatever the number of devices (the
    paper's 8), so the step counts of the recipes keep their meaning; it must divide evenly.
    """
    if batch_size % world_size:
        raise ConfigError(
            f"data.batch_size = {batch_size} is the global batch and does not divide among "
            f"{world_size} processes; use a multiple of {world_size}"
        )
    return batch_size // world_size


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def auto_num_workers() -> int:
    """Loader workers for this process: its share of the CPUs less one for the main loop.

    The CPUs are shared by the ``LOCAL_WORLD_SIZE`` processes of the node (set by
    ``torchrun``; 1 otherwise), and more than 8 workers rarely helps one accelerator.
    """
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(8, available_cpus() // local - 1))


def resolve_num_workers(value: int | str) -> int:
    """``data.num_workers`` as a count: an integer >= 0, or ``"auto"``."""
    if value == "auto":
        return auto_num_workers()
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = -1
    if count < 0 or isinstance(value, float | bool):
        raise ConfigError(f"data.num_workers must be an integer >= 0 or 'auto', got {value!r}")
    return count


def _scheme(partition: Mapping[str, Any] | None, bucket: str | None) -> PartitionScheme | None:
    """The partition scheme of the config, checking ``bucket`` belongs to it."""
    if partition is None:
        if bucket is not None:
            raise ConfigError(f"data.bucket={bucket} needs data.partition (e.g. partition=three)")
        return None
    scheme = PartitionScheme.from_config(partition)
    if bucket is not None:
        try:
            scheme.index(bucket)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    return scheme
