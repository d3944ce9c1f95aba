"""Training batches that can be resumed from the middle of an epoch, exactly.

The order of an epoch is a function of ``(seed, epoch)`` alone and every item carries its
epoch, so the augmentation of an item is a function of ``(seed, epoch, position)`` too (see
:class:`cdkd.data.dataset.ChangeDetectionDataset`). Nothing depends on the global random
state, the number of workers or the process that draws it: after a resume, skipping the
batches already trained gives the batches an uninterrupted run would have seen next.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler

#: What the training sampler yields: ``(position in the dataset, epoch)``.
TrainKey = tuple[int, int]


class EpochShuffleSampler(DistributedSampler[int]):
    """Shuffles each epoch by ``(seed, epoch)``, shards across ranks, can start mid-epoch.

    A :class:`~torch.utils.data.DistributedSampler` (so Lightning keeps it under DDP instead
    of wrapping it) that yields :data:`TrainKey` tuples. ``num_replicas=1`` is the
    single-process case.
    """

    def __init__(self, dataset: Sized, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        # torch annotates ``dataset`` as a Dataset, but the sampler only takes its length.
        super().__init__(
            dataset,  # type: ignore[arg-type]
            num_replicas=num_replicas,
            rank=rank,
            shuffle=True,
            seed=seed,
        )
        self._skip = 0

    def resume(self, epoch: int, skip: int) -> None:
        """Make the next iteration epoch ``epoch`` without its first ``skip`` items."""
        self.set_epoch(epoch)
        self._skip = skip

    # Yields (position, epoch) keys where the base class yields positions.
    def __iter__(self) -> Iterator[TrainKey]:  # type: ignore[override]
        skip, self._skip = self._skip, 0
        epoch = self.epoch
        for position in itertools.islice(super().__iter__(), skip, None):
            yield position, epoch


class ResumableLoader(DataLoader[Any]):
    """Training loader whose position in the epoch Lightning stores in every checkpoint.

    Lightning saves ``state_dict()`` of stateful training loaders with the loop state and
    calls ``load_state_dict`` before it starts iterating a resumed run; the next iteration
    then continues the interrupted epoch. ``len`` stays the full epoch, as Lightning counts
    the batches of a resumed epoch from the restored progress.
    """

    sampler: EpochShuffleSampler

    def __init__(
        self, dataset: Any, sampler: EpochShuffleSampler, batch_size: int, **kwargs: Any
    ) -> None:
        # Worker seeds come from this generator, not from the global random state: a resumed
        # run creates its iterator at another moment than an uninterrupted one.
        generator = torch.Generator().manual_seed(sampler.seed)
        super().__init__(
            dataset, sampler=sampler, batch_size=batch_size, generator=generator, **kwargs
        )
        self._items_per_batch = batch_size
        self._served = 0
        self._start = 0

    # A counting generator over the base iterator (Lightning only iterates it).
    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        batches = super().__iter__()
        self._served, self._start = self._start, 0
        return self._count(batches)

    def _count(self, batches: Iterator[Any]) -> Iterator[Any]:
        for batch in batches:
            self._served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """The epoch and how many of its batches were handed out."""
        return {"epoch": self.sampler.epoch, "batches": self._served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue after ``state["batches"]`` batches of ``state["epoch"]``."""
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if batches >= len(self):
            epoch, batches = epoch + 1, 0
        self.sampler.resume(epoch, batches * self._items_per_batch)
        self._start = batches
