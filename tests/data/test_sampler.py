"""The training order: a function of (seed, epoch), sharded across ranks, resumable mid-epoch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from cdkd.data import ChangeDataModule
from cdkd.data.sampler import EpochShuffleSampler, ResumableLoader


def keys(sampler: EpochShuffleSampler) -> list[tuple[int, int]]:
    return list(iter(sampler))


def test_order_depends_on_seed_and_epoch_only() -> None:
    data = range(20)
    first, again, other = (EpochShuffleSampler(data, seed=s) for s in (1, 1, 2))
    torch.manual_seed(0)
    order = keys(first)
    torch.manual_seed(99)  # the global random state plays no part
    assert keys(again) == order
    assert sorted(p for p, _ in order) == list(range(20)) and {e for _, e in order} == {0}
    assert keys(other) != order
    again.set_epoch(1)
    assert keys(again) != order and {e for _, e in keys(again)} == {1}


def test_ranks_share_an_epoch_without_overlap() -> None:
    shards = [keys(EpochShuffleSampler(range(10), num_replicas=2, rank=r, seed=4)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 5
    assert sorted(p for shard in shards for p, _ in shard) == list(range(10))


def test_resume_skips_once() -> None:
    sampler = EpochShuffleSampler(range(8), seed=5)
    sampler.set_epoch(2)
    full = keys(sampler)
    sampler.resume(2, 3)
    assert keys(sampler) == full[3:]
    assert keys(sampler) == full


def module(root: Path, **kwargs: object) -> ChangeDataModule:
    options: dict[str, object] = {"augment": "standard", "batch_size": 2, "seed": 11} | kwargs
    dm = ChangeDataModule(root=str(root), **options)
    dm.setup("fit")
    return dm


def flat(batches: list[dict]) -> list[tuple[list[str], torch.Tensor, torch.Tensor]]:
    return [(b["name"], b["image1"], b["mask"]) for b in batches]


def assert_same(got: list[dict], expected: list[dict]) -> None:
    assert len(got) == len(expected)
    for (names, image, mask), (names_e, image_e, mask_e) in zip(
        flat(got), flat(expected), strict=True
    ):
        assert names == names_e
        torch.testing.assert_close(image, image_e, rtol=0, atol=0)
        assert torch.equal(mask, mask_e)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_loader_restored_mid_epoch_hands_out_the_rest_of_the_epoch(
    dataset_factory: Callable[..., Path], workers: int
) -> None:
    root = dataset_factory({"train": 10, "val": 2})
    loader = module(root).train_dataloader()
    assert isinstance(loader, ResumableLoader) and len(loader) == 5
    loader.sampler.set_epoch(1)
    uninterrupted = list(loader)

    interrupted = module(root).train_dataloader()
    interrupted.sampler.set_epoch(1)
    served = iter(interrupted)
    taken = [next(served) for _ in range(2)]
    state = interrupted.state_dict()
    assert state == {"epoch": 1, "batches": 2}
    assert_same(taken, uninterrupted[:2])

    resumed = module(root, num_workers=workers).train_dataloader()  # a fresh process's loader
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert_same(rest, uninterrupted[2:])
    assert resumed.state_dict() == {"epoch": 1, "batches": 5}
    assert len(list(resumed)) == 5  # the epoch after is whole again


def test_a_loader_restored_at_the_end_of_an_epoch_starts_the_next(
    dataset_factory: Callable[..., Path],
) -> None:
    root = dataset_factory({"train": 6, "val": 2})
    loader = module(root).train_dataloader()
    loader.sampler.set_epoch(4)
    expected = list(loader)
    restored = module(root).train_dataloader()
    restored.load_state_dict({"epoch": 3, "batches": 3})
    assert restored.sampler.epoch == 4
    assert_same(list(restored), expected)
