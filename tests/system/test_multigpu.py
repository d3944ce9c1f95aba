"""Multi-device semantics: ``data.batch_size`` is the global batch, split among the processes;
step counts stay the recipe's; epoch-counted recipes use the real number of processes.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from cdkd.data import ChangeDataModule
from cdkd.data.datamodule import process_batch_size
from cdkd.errors import ConfigError
from cdkd.training.run import resolve_schedule, resolve_world_size, train
from tests.factories import Composer, run_tool


@pytest.fixture
def config(compose_config: Composer) -> Composer:
    """``config(*overrides)``: the training config."""
    return functools.partial(compose_config, "train")


@pytest.fixture
def four_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning sees four CUDA devices (its device parsing asks these two functions)."""
    import lightning.fabric.accelerators.cuda as fabric_cuda
    import lightning.pytorch.accelerators.cuda as pytorch_cuda

    monkeypatch.setattr(fabric_cuda, "num_cuda_devices", lambda: 4)
    monkeypatch.setattr(pytorch_cuda, "num_cuda_devices", lambda: 4)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["trainer=ddp"], 2),
        (["trainer=ddp", "trainer.devices=-1"], 4),
        (["trainer=ddp", "trainer.devices=auto"], 4),
        (["trainer=ddp", "trainer.devices=[0,1]"], 2),
        (["trainer=ddp", "trainer.devices='0,1'"], 2),
        (["trainer=ddp", "trainer.devices='-1'"], 4),
        (["trainer=ddp", "trainer.num_nodes=2"], 4),
        (["trainer=ddp", "trainer.devices=auto", "trainer.num_nodes=2"], 8),
        (["trainer=gpu"], 1),
        (["trainer=cpu", "trainer.devices=auto"], 1),  # auto is one process on CPUs
    ],
)
def test_world_size_counts_what_lightning_would_run(
    four_gpus: None, config: Composer, overrides: list[str], expected: int
) -> None:
    assert resolve_world_size(config(*overrides)) == expected


def test_world_size_on_a_machine_without_gpus(
    monkeypatch: pytest.MonkeyPatch, config: Composer
) -> None:
    import lightning.fabric.accelerators.cuda as fabric_cuda
    import lightning.pytorch.accelerators.cuda as pytorch_cuda

    monkeypatch.setattr(fabric_cuda, "num_cuda_devices", lambda: 0)
    monkeypatch.setattr(pytorch_cuda, "num_cuda_devices", lambda: 0)
    assert resolve_world_size(config("trainer.devices=auto")) == 1  # accelerator auto: the CPU
    assert resolve_world_size(config("trainer=ddp", "trainer.accelerator=cpu")) == 2
    with pytest.raises(ConfigError, match=r"trainer.accelerator = 'gpu': no such device"):
        resolve_world_size(config("trainer=gpu"))


def test_world_size_rejects_devices_lightning_would_reject(
    four_gpus: None, config: Composer
) -> None:
    with pytest.raises(ConfigError, match=r"trainer.devices = \[0, 5\]"):
        resolve_world_size(config("trainer=gpu", "trainer.devices=[0,5]"))
    with pytest.raises(ConfigError, match=r"trainer.accelerator = 'abacus'"):
        resolve_world_size(config("trainer.accelerator=abacus"))


def test_each_process_takes_its_share_of_the_global_batch() -> None:
    assert process_batch_size(8, 1) == 8
    assert process_batch_size(8, 2) == 4
    assert process_batch_size(16, 8) == 2
    with pytest.raises(ConfigError) as info:
        process_batch_size(8, 3)
    message = str(info.value)
    assert "data.batch_size = 8" in message and "3 processes" in message
    assert "\n" not in message


def test_loaders_of_one_of_two_processes(dataset_factory) -> None:
    root = dataset_factory({"train": 10, "val": 5})
    dm = ChangeDataModule(root=str(root), batch_size=4, eval_batch_size=3, num_workers=0)
    dm.setup("fit")
    single = dm.train_batches(1)
    assert single == 2  # 10 pairs in batches of 4, the ragged one dropped
    dm.trainer = SimpleNamespace(world_size=2, global_rank=1)
    batches = list(dm.train_dataloader())
    assert [len(b["name"]) for b in batches] == [2, 2]  # 5 pairs on this rank, batches of 2
    assert dm.train_batches(2) == len(batches) == single  # the same optimizer steps an epoch
    assert [len(b["name"]) for b in dm.dataloader("val")] == [2, 2, 1]  # 3 over 2: 2 each


class _Batches:
    """A datamodule whose epoch has 487 batches (JL1-CD: 3900 pairs / 8) on any world size."""

    def __init__(self) -> None:
        self.asked: list[int] = []

    def setup(self, stage: str) -> None:
        pass

    def train_batches(self, world_size: int = 1) -> int:
        self.asked.append(world_size)
        return 487


@pytest.mark.parametrize("world", [1, 2, 8])
def test_epoch_schedules_count_the_batches_of_the_real_world_size(
    config: Composer, world: int
) -> None:
    data = _Batches()
    schedule = resolve_schedule(config("model=ttp_sam_l", "data=jl1cd"), data, world)
    assert (schedule.max_steps, schedule.warmup_steps, schedule.val_every) == (
        300 * 487,
        5 * 487,
        5 * 487,
    )
    assert data.asked == [world]
    steps = resolve_schedule(config("model=tinycd", "data=jl1cd", "trainer=ddp"), _Batches(), world)
    assert steps.max_steps == 200_000  # the paper's steps whatever the number of devices


def test_a_batch_that_does_not_divide_stops_before_training(
    tmp_path: Path, config: Composer
) -> None:
    cfg = config(
        "experiment=smoke",
        "logger=none",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "data.batch_size=3",
        f"paths.data_dir={tmp_path / 'data'}",
        f"run_dir={tmp_path / 'run'}",
    )
    with pytest.raises(ConfigError, match=r"data.batch_size = 3 .* among 2 processes"):
        train(cfg)
    assert not (tmp_path / "run" / "config.yaml").exists()
    assert not (tmp_path / "data").exists()  # nothing was read or generated


PROBE = '''
import functools
import json
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class BatchProbe(Callback):
    """Records (epoch, batch size) of every training batch of this process."""

    def __init__(self, folder: str) -> None:
        self.folder, self.seen = Path(folder), []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append([trainer.current_epoch, len(batch["name"])])

    def on_train_end(self, trainer, pl_module):
        record = {"seen": self.seen, "world": trainer.world_size, "step": trainer.global_step}
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
'''


def epoch_run(tmp_path: Path, name: str, *extra: str) -> list[str]:
    """Two epochs of 14 pairs in global batches of 4, counted as a model's recipe."""
    probe = tmp_path / name
    probe.mkdir()
    return [
        "experiment=smoke",
        "model=fc_ef",
        "logger=none",
        "test_after_fit=false",
        "data.batch_size=4",
        "data.synthetic.counts={train: 14, val: 4, test: 4}",
        "+model.epochs={max: 2, distill: 1, warmup: 0, val_every: 1}",
        "+schedule.model_epochs=true",
        f"paths.data_dir={tmp_path / 'data'}",
        f"run_dir={tmp_path / name / 'run'}",
        "+callbacks.probe._target_=batch_probe.BatchProbe",
        f"+callbacks.probe.folder={probe}",
        *extra,
    ]


def test_two_process_ddp_splits_the_batch_and_keeps_the_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: Composer
) -> None:
    (tmp_path / "batch_probe.py").write_text(PROBE)
    monkeypatch.syspath_prepend(str(tmp_path))
    train(config(*epoch_run(tmp_path, "single")))
    # The DDP launcher starts the second process with this command line, in the same folder
    # (where ``python -m`` finds the probe).
    ddp = ("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")
    run_tool("cdkd.train", *epoch_run(tmp_path, "ddp", *ddp), cwd=tmp_path)

    (single,) = [json.loads((tmp_path / "single" / "rank0.json").read_text())]
    ranks = [json.loads((tmp_path / "ddp" / f"rank{r}.json").read_text()) for r in (0, 1)]
    # 14 pairs in batches of 4: 3 steps an epoch (the ragged batch dropped), 6 in all.
    assert single["world"] == 1 and single["step"] == 6
    assert single["seen"] == [[0, 4]] * 3 + [[1, 4]] * 3
    for rank in ranks:  # 7 pairs each, in batches of 2: the same 3 steps an epoch
        assert rank["world"] == 2 and rank["step"] == single["step"]
        assert rank["seen"] == [[0, 2]] * 3 + [[1, 2]] * 3
