"""Two gloo processes: metrics reduce to one process's figures; val images are not repeated."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from cdkd.data.datamodule import ChangeDataModule
from cdkd.metrics import ChangeMetrics

#: Images each rank scores, as lists of batches of positions: uneven shares (4 + 3 images,
#: two batches against one) and a rank that sees no image at all.
SHARDS = {
    "uneven": [[[0, 2], [4, 6]], [[1, 3, 5]]],
    "idle_rank": [[[0, 1, 2], [3, 4, 5, 6]], []],
}


def dataset() -> tuple[torch.Tensor, torch.Tensor]:
    """Seven 8x8 predictions and labels, with ignore pixels and a change-free image."""
    gen = torch.Generator().manual_seed(0)
    preds = torch.rand(7, 8, 8, generator=gen) > 0.6
    target = (torch.rand(7, 8, 8, generator=gen) > 0.5).long()
    target[1, :2] = 255
    target[3] = 0
    preds[3] = False
    return preds, target


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def summary(metrics: ChangeMetrics) -> dict:
    """Computed figures plus the gathered per-image counts (rows sorted: rank order differs)."""
    counts = metrics.per_image_counts().tolist()
    return {**metrics.compute(), "rows": sorted(counts)}


def write_split(root: Path, count: int) -> None:
    """``count`` 16x16 pairs in ``root/{train,val}`` (labels without change)."""
    for split in ("train", "val"):
        for folder in ("A", "B", "label"):
            (root / split / folder).mkdir(parents=True)
        for i in range(count):
            image = Image.fromarray(np.full((16, 16, 3), i, np.uint8))
            for folder in ("A", "B"):
                image.save(root / split / folder / f"{i}.png")
            Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / split / "label" / f"{i}.png")


def data_module(root: Path) -> ChangeDataModule:
    return ChangeDataModule(root=str(root), eval_batch_size=2, num_workers=0)


def worker(rank: int, port: int, out: str, root: str) -> None:
    """Score this rank's share of every case, list its val images, write the results."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        preds, target = dataset()
        results = {}
        for case, shards in SHARDS.items():
            metrics = ChangeMetrics()
            for positions in shards[rank]:
                idx = torch.tensor(positions)
                metrics.update(preds[idx], target[idx])
            results[case] = summary(metrics)
        dm = data_module(Path(root))
        dm.setup("validate")
        results["val_names"] = [name for batch in dm.val_dataloader() for name in batch["name"]]
        Path(out, f"{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def gathered(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out, root = tmp_path_factory.mktemp("ddp"), tmp_path_factory.mktemp("data")
    write_split(root, 5)
    data_module(root).setup("validate")  # the CAR index is built once, before the ranks start
    mp.spawn(worker, args=(free_port(), str(out), str(root)), nprocs=2, join=True)
    return [json.loads(Path(out, f"{rank}.json").read_text()) for rank in (0, 1)]


@pytest.mark.parametrize("case", sorted(SHARDS))
def test_two_rank_metrics_equal_one_process(gathered: list[dict], case: str) -> None:
    preds, target = dataset()
    single = ChangeMetrics()
    single.update(preds, target)
    expected = summary(single)
    for rank in (0, 1):
        result = gathered[rank][case]
        assert result["count"] == 7
        assert result["rows"] == expected["rows"]
        for view in ("per_image", "pooled"):
            assert result[view] == pytest.approx(expected[view], rel=1e-12, abs=1e-12)


def test_validation_images_are_shared_out_without_repeats(gathered: list[dict]) -> None:
    assert gathered[0]["val_names"] == ["0.png", "2.png", "4.png"]
    assert gathered[1]["val_names"] == ["1.png", "3.png"]
