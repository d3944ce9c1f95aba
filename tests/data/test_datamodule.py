"""ChangeDataModule: batches, normalisation, padding collate, partitions and the configs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from cdkd.data import IMAGENET_MEAN, IMAGENET_STD, ChangeDataModule
from cdkd.data.config import datamodule_from_config
from cdkd.errors import ConfigError, DataError

CONF = Path(__file__).resolve().parents[2] / "conf"


def _module(root: Path, **kwargs: object) -> ChangeDataModule:
    options: dict[str, object] = {"augment": "standard", "batch_size": 4} | kwargs
    return ChangeDataModule(root=str(root), **options)


def test_batches_have_the_agreed_shapes_and_dtypes(dataset_factory: Callable[..., Path]) -> None:
    root = dataset_factory({"train": 9, "val": 3, "test": 2})
    dm = _module(root, eval_batch_size=2)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image1"].shape == batch["image2"].shape == (4, 3, 32, 32)
    assert batch["image1"].dtype == torch.float32
    assert batch["mask"].shape == (4, 32, 32)
    assert batch["mask"].dtype == torch.int64
    assert set(batch["mask"].unique().tolist()) <= {0, 1, 255}
    assert len(batch["name"]) == 4 and all(isinstance(n, str) for n in batch["name"])
    assert "size" not in batch
    assert len(dm.train_dataloader()) == 2  # 9 pairs, batches of 4, the ragged one dropped
    val = next(iter(dm.val_dataloader()))
    assert val["image1"].shape == (2, 3, 32, 32)
    assert val["size"].tolist() == [[32, 32], [32, 32]]
    assert val["name"] == ["0.png", "1.png"]
    dm.setup("test")
    test = list(dm.test_dataloader())
    assert [n for b in test for n in b["name"]] == ["0.png", "1.png"]
    train_eval = [n for b in dm.dataloader("train") for n in b["name"]]
    assert train_eval == [row.name for row in dm.index("train")]


def test_items_are_normalised_with_mean_and_std(dataset_factory: Callable[..., Path]) -> None:
    root = dataset_factory({"train": 2, "val": 1})
    mean, std = (10.0, 20.0, 30.0), (2.0, 4.0, 5.0)
    dm = _module(root, augment="none", mean=mean, std=std)
    dm.setup("fit")
    item = dm.dataloader("val").dataset[0]
    raw = np.asarray(Image.open(root / "val" / "B" / "0.png"), dtype=np.float32)
    expected = (raw - np.array(mean, np.float32)) / np.array(std, np.float32)
    np.testing.assert_allclose(item["image2"].permute(1, 2, 0).numpy(), expected, rtol=1e-6)
    label = np.asarray(Image.open(root / "val" / "label" / "0.png"))
    np.testing.assert_array_equal(item["mask"].numpy(), (label == 255).astype(np.int64))
    assert _module(root).mean == IMAGENET_MEAN and _module(root).std == IMAGENET_STD


def test_eval_collate_pads_mixed_sizes(tmp_path: Path, pair_writer: Callable[..., None]) -> None:
    pair_writer(tmp_path / "test", "1", np.ones((32, 32), dtype=np.uint8))
    pair_writer(tmp_path / "test", "2", np.ones((24, 40), dtype=np.uint8))
    dm = ChangeDataModule(root=str(tmp_path), batch_size=2, mean=(0, 0, 0), std=(1, 1, 1))
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["image1"].shape == (2, 3, 32, 40)
    assert batch["size"].tolist() == [[32, 32], [24, 40]]
    assert batch["size"].dtype == torch.int64
    mask = batch["mask"]
    assert (mask[0, :, 32:] == 255).all() and (mask[0, :, :32] == 1).all()
    assert (mask[1, 24:] == 255).all() and (mask[1, :24] == 1).all()
    assert (batch["image2"][0, :, :, 32:] == 0).all() and (batch["image2"][1, :, 24:] == 0).all()


def test_mixed_training_sizes_need_a_crop(tmp_path: Path, pair_writer: Callable[..., None]) -> None:
    for split in ("train", "val"):
        pair_writer(tmp_path / split, "1", np.zeros((32, 32), dtype=np.uint8))
        pair_writer(tmp_path / split, "2", np.zeros((40, 36), dtype=np.uint8))
    with pytest.raises(DataError, match=r"training images have different sizes.*data\.crop_size"):
        _module(tmp_path).setup("fit")
    dm = _module(tmp_path, crop_size=24, batch_size=2)
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))["image1"].shape == (2, 3, 24, 24)


def test_partition_restricts_train_and_val_but_never_test(
    tmp_path: Path, pair_writer: Callable[..., None]
) -> None:
    cars = {"s1": 0, "l1": 300, "s2": 10, "m1": 50, "l2": 400}
    for split in ("train", "val", "test"):
        for name, changed in cars.items():
            mask = np.zeros(400, dtype=np.uint8)
            mask[:changed] = 1
            pair_writer(tmp_path / split, name, mask.reshape(20, 20))
    partition = {
        "name": "three",
        "thresholds": [0.05, 0.2],
        "buckets": ["small", "medium", "large"],
    }
    dm = _module(tmp_path, partition=partition, bucket="large", batch_size=1, augment="none")
    dm.setup("fit")
    dm.setup("test")
    assert [r.name for r in dm.index("train")] == ["l1.png", "l2.png"]
    assert [b["name"][0] for b in dm.val_dataloader()] == ["l1.png", "l2.png"]
    assert [r.car for r in dm.index("val")] == [0.75, 1.0]
    assert len(dm.index("test")) == 5
    assert dm.index_checksum("train") != dm.index_checksum("test")
    small = _module(tmp_path, partition=partition, bucket="small", batch_size=1)
    small.setup("fit")
    assert [r.name for r in small.index("train")] == ["s1.png", "s2.png"]


def test_empty_partition_of_val_is_an_error(
    tmp_path: Path, pair_writer: Callable[..., None]
) -> None:
    pair_writer(tmp_path / "train", "1", np.ones((20, 20), dtype=np.uint8))
    pair_writer(tmp_path / "val", "1", np.zeros((20, 20), dtype=np.uint8))
    partition = {"name": "two", "thresholds": [0.1], "buckets": ["small", "large"]}
    dm = _module(tmp_path, partition=partition, bucket="large")
    with pytest.raises(DataError, match=r"val: CAR partition 'large' of split 'val' is empty"):
        dm.setup("fit")


def test_configuration_errors_are_reported_early(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"needs data\.partition"):
        _module(tmp_path, bucket="small")
    with pytest.raises(ConfigError, match="no bucket 'tiny'"):
        _module(tmp_path, partition={"name": "three"}, bucket="tiny")
    with pytest.raises(ConfigError, match="unknown augmentation"):
        _module(tmp_path, augment="wild")
    with pytest.raises(ConfigError, match="unknown split"):
        _module(tmp_path, splits={"holdout": "x"})
    dm = _module(tmp_path, num_workers=0, persistent_workers=True)
    assert dm.persistent_workers is False
    assert dm.pin_memory == torch.cuda.is_available()
    assert _module(tmp_path, num_workers=2).persistent_workers is True


def test_label_threshold_reads_jpeg_like_labels_and_counts_them(
    tmp_path: Path, pair_writer: Callable[..., None], caplog: pytest.LogCaptureFixture
) -> None:
    for split in ("train", "val", "test"):
        for i in range(3):
            pair_writer(tmp_path / split, str(i), np.zeros((8, 8), dtype=np.uint8), seed=i)
    noisy = np.zeros((8, 8), np.uint8)
    noisy[:4] = 250  # 32 changed pixels, with JPEG-like values on both sides of 128
    noisy[4, :2] = (140, 100)
    noisy[5, 0] = 3
    Image.fromarray(noisy).save(tmp_path / "train" / "label" / "1.png")
    with pytest.raises(DataError, match=r"1\.png: label values .*data\.label_threshold"):
        _module(tmp_path).setup("fit")
    caplog.set_level("INFO", logger="cdkd.data.datamodule")
    dm = _module(tmp_path, label_threshold=128)
    dm.setup("fit")
    assert dm.index("train").cars.tolist() == [0.0, 33 / 64, 0.0]
    assert "train: 1 of 3 labels have values other than 0/255 and 0/1, binarised at >= 128" in (
        caplog.text
    )
    assert "val: 0 of 3 labels" in caplog.text
    item = dm.dataloader("train").dataset[1]
    assert int(item["mask"].sum()) == 33
    # Another threshold is another index: the cached one is not reused.
    assert _module(tmp_path, label_threshold=2).index("train").cars.tolist()[1] == 35 / 64
    with pytest.raises(ConfigError, match="label_threshold"):
        _module(tmp_path, label_threshold=300)


def test_training_batches_are_the_same_with_or_without_workers(
    tmp_path: Path, pair_writer: Callable[..., None]
) -> None:
    for split in ("train", "val"):
        for name in ("1", "2", "3", "4"):
            pair_writer(tmp_path / split, name, np.zeros((16, 16), dtype=np.uint8))

    def epoch(num_workers: int) -> list[dict]:
        dm = _module(tmp_path, augment="changer", num_workers=num_workers, batch_size=1, seed=3)
        dm.setup("fit")
        return list(dm.train_dataloader())

    alone, workers = epoch(0), epoch(2)
    assert sorted(b["name"][0] for b in alone) == ["1.png", "2.png", "3.png", "4.png"]
    for a, b in zip(alone, workers, strict=True):
        assert a["name"] == b["name"] and torch.equal(a["image1"], b["image1"])
    # Identical files, yet each item draws its own augmentation.
    assert len({b["image1"].numpy().tobytes() for b in alone}) > 1


def _compose_data(name: str, data_dir: Path) -> DictConfig:
    """The data config ``name`` in a root with minimal model/stage/partition/paths groups."""
    base, data = (
        OmegaConf.load(CONF / "_base" / "data.yaml"),
        OmegaConf.load(CONF / "data" / f"{name}.yaml"),
    )
    assert data.pop("defaults")[0] == "/_base/data@_here_"
    assert base.pop("defaults")[0] == {"/schedule@_global_.schedule": "paper"}
    root = OmegaConf.create(
        {
            "paths": {"data_dir": str(data_dir)},
            "model": {
                "batch_size": 2,
                "augment": "changer",
                "normalize": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
            },
            "stage": {"bucket": "medium"},
            "partition": OmegaConf.load(CONF / "partition" / "three.yaml"),
            "data": OmegaConf.merge(base, data),
        }
    )
    return root


@pytest.mark.parametrize(
    ("name", "folder", "val_from_train"),
    [("jl1cd", "JL1-CD", 100), ("sysucd", "SYSU-CD", 0), ("synthetic", "synthetic", 0)],
)
def test_data_configs_instantiate(
    tmp_path: Path, name: str, folder: str, val_from_train: int
) -> None:
    cfg = _compose_data(name, tmp_path)
    assert cfg.data.pretrained is (name != "synthetic")  # real data starts pretrained
    dm = datamodule_from_config(cfg)
    assert isinstance(dm, ChangeDataModule)
    assert dm.name == name
    assert dm.root == tmp_path / folder
    assert dm.val_from_train == val_from_train
    assert dm.bucket == "medium" and dm.scheme is not None
    assert dm.scheme.thresholds == (0.05, 0.2)
    assert dm.batch_size == 2 and dm.train_augment is not None
    assert dm.train_augment.exchange_p == 0.5


def test_datamodule_from_config_applies_overrides_and_refuses_other_targets(
    tmp_path: Path,
) -> None:
    cfg = _compose_data("jl1cd", tmp_path)
    assert datamodule_from_config(cfg, bucket=None).bucket is None
    assert cfg.data.pretrained is True  # the caller's config keeps the model's setting
    cfg.data._target_ = "collections.OrderedDict"
    with pytest.raises(ConfigError) as err:
        datamodule_from_config(cfg)
    assert "builds a OrderedDict, not a cdkd.data.ChangeDataModule" in str(err.value)
    assert "\n" not in str(err.value)


def test_folder_config_needs_a_root(tmp_path: Path) -> None:
    cfg = _compose_data("folder", tmp_path)
    assert OmegaConf.is_missing(cfg.data, "root")
    cfg.data.root = str(tmp_path)
    assert datamodule_from_config(cfg).val_from_train == 0
    two = OmegaConf.load(CONF / "partition" / "two.yaml")
    assert (two.name, list(two.thresholds), list(two.buckets)) == ("two", [0.1], ["small", "large"])


def test_synthetic_option_generates_the_dataset(tmp_path: Path) -> None:
    pytest.importorskip("cdkd.data.synthetic")
    dm = _module(
        tmp_path / "synthetic",
        synthetic={"counts": {"train": 4, "val": 2, "test": 2}, "size": 32, "seed": 0},
        batch_size=2,
    )
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    assert [len(dm.index(s)) for s in ("train", "val", "test")] == [4, 2, 2]
    batch = next(iter(dm.train_dataloader()))
    assert batch["image1"].shape == (2, 3, 32, 32)
