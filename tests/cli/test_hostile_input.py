"""Hostile input through the real entry points (``cdkd.train``, ``cdkd.eval``, ``cdkd.predict``).

One test (or parametrize row) per hostile input of the reliability checklist. Each bad input
must end the command with a one-line ``error: ...`` naming the file (or config key) and the
problem, exit status 1, and nothing written half-way: no checkpoint, metrics or provenance in
the run folder, no CAR index cached for the bad split, no output for the bad pair, and no
temporary file anywhere. Names with spaces and unicode, hidden junk files and NaN/Inf pixels
in a GeoTIFF are not errors: those runs must succeed.

The Hydra task functions run in this process (``main.__wrapped__`` is the task wrapped by
``report_errors``, i.e. what ``python -m cdkd.<tool>`` runs once Hydra composed the config);
only the config-composition cases (unknown key, unknown option, bad syntax), which Hydra
rejects before the task starts, run real processes.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from omegaconf import DictConfig
from PIL import Image
from rasterio.transform import Affine

from cdkd.data.car_index import cache_path
from cdkd.inference.geotiff import MASK_NODATA
from cdkd.models import create_model
from tests.factories import Composer, run_tool, save_checkpoint, write_pair

MODEL = "fc_ef"
# 4 training pairs of 32 px, batch 2, one optimizer step: the smallest real run.
TINY = (
    "data=folder",
    "data.num_workers=0",
    "data.batch_size=2",
    "data.augment=none",
    f"model={MODEL}",
    "logger=none",
    "callbacks.progress_bar=null",
    "trainer.enable_model_summary=false",
    "schedule.max_steps=1",
    "schedule.val_every=1",
    "schedule.warmup_steps=0",
    "test_after_fit=false",
)
RUN_OUTPUTS = ("*.ckpt", "metrics.json", "provenance.json", "eval")


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in ``tmp_path`` with default paths there, and one-line errors (no debug mode)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CDKD_DEBUG", raising=False)
    monkeypatch.setenv("CDKD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CDKD_RUNS_DIR", str(tmp_path / "runs"))


def task(tool: str) -> Callable[[DictConfig], Any]:
    """The body of ``python -m cdkd.<tool>`` after Hydra: the task wrapped by report_errors."""
    return importlib.import_module(f"cdkd.cli.{tool}").main.__wrapped__


@pytest.fixture
def fails_with_one_line(
    capsys: pytest.CaptureFixture[str], compose_config: Composer
) -> Callable[..., str]:
    """Run ``cdkd.<tool> OVERRIDES``; it must exit with status 1 after one ``error:`` line."""

    def run(tool: str, *overrides: str) -> str:
        cfg = compose_config(tool, *overrides)
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            task(tool)(cfg)
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 1, err
        assert len(err.splitlines()) == 1, err
        assert err.startswith("error: "), err
        return err

    return run


@pytest.fixture
def eval_fails(fails_with_one_line: Callable[..., str]) -> Callable[[Path, Path, Path], str]:
    """``cdkd.eval`` of a checkpoint on the dataset at a root must fail with one line."""

    def run(root: Path, checkpoint: Path, out_dir: Path) -> str:
        overrides = [f"model={MODEL}", "data=folder", f"data.root={root}"]
        overrides += [f"checkpoint={checkpoint}", f"out_dir={out_dir}", "device=cpu"]
        return fails_with_one_line("eval", *overrides)

    return run


def assert_no_temporaries(root: Path) -> None:
    """No ``*.tmp`` file left anywhere under ``root`` (atomic writes clean up after failures)."""
    assert sorted(root.rglob("*.tmp")) == []


def assert_run_not_started(run_dir: Path) -> None:
    """The run folder holds at most its config: no checkpoint, metrics or provenance."""
    for pattern in RUN_OUTPUTS:
        assert sorted(run_dir.glob(pattern)) == [], pattern


def tiny_dataset(root: Path, suffix: str = ".png", names: tuple[str, ...] = ()) -> Path:
    """``root/{train,val,test}`` with 4/2/2 pairs of 32 px (named 0..n, or ``names``)."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("val", 2), ("test", 2)):
        for i, name in enumerate((names or tuple(str(n) for n in range(count)))[:count]):
            mask = np.zeros((32, 32), np.uint8)
            mask[: int(rng.integers(1, 16)), : int(rng.integers(1, 16))] = 1
            write_pair(root / split, name, mask, image_suffix=suffix, label_suffix=suffix, seed=i)
    return root


def train_overrides(root: Path, run_dir: Path, *extra: str) -> list[str]:
    return [*TINY, f"data.root={root}", f"run_dir={run_dir}", *extra]


def truncate(path: Path) -> None:
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])


def rgb_image(height: int, width: int) -> Image.Image:
    pixels = np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def label_image(values: list[int]) -> Image.Image:
    mask = np.zeros((32, 32), np.uint8)
    for row, value in enumerate(values):
        mask[row] = value
    return Image.fromarray(mask)


# --- bad data files, met by `python -m cdkd.train data=folder data.root=...` ------------------


def _truncated_png(split: Path) -> tuple[Path, str]:
    truncate(split / "A" / "1.png")
    return split / "A" / "1.png", "unreadable or corrupt image"


def _garbage_png(split: Path) -> tuple[Path, str]:
    path = split / "B" / "0.png"
    path.write_bytes(np.random.default_rng(2).integers(0, 256, 600, np.uint8).tobytes())
    return path, "unreadable or corrupt image (not a known image format)"


def _zero_byte(split: Path) -> tuple[Path, str]:
    (split / "label" / "1.png").write_bytes(b"")
    return split / "label" / "1.png", "unreadable or corrupt image (empty file)"


def _a_b_sizes_differ(split: Path) -> tuple[Path, str]:
    rgb_image(32, 40).save(split / "B" / "1.png")
    return split / "B" / "1.png", "size 32x40 differs from its label 1.png (32x32)"


def _a_label_sizes_differ(split: Path) -> tuple[Path, str]:
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(split / "label" / "0.png")
    return split / "A" / "0.png", "size 32x32 differs from its label 0.png (40x40)"


def _labels_0_1_2(split: Path) -> tuple[Path, str]:
    label_image([0, 1, 2]).save(split / "label" / "1.png")
    return split / "label" / "1.png", (
        "label values {0, 1, 2} are neither 0/255 nor 0/1; set data.label_threshold=T"
    )


def _rgb_colour_label(split: Path) -> tuple[Path, str]:
    colour = np.zeros((32, 32, 3), np.uint8)
    colour[:8] = (255, 0, 0)
    colour[8:16] = (0, 255, 0)
    Image.fromarray(colour).save(split / "label" / "0.png")
    return (
        split / "label" / "0.png",
        "label is a colour image; expected a single-channel 0/255 mask (set data.label_threshold",
    )


def _notes_txt(split: Path) -> tuple[Path, str]:
    (split / "A" / "notes.txt").write_text("acquired in May\n")
    return split / "A" / "notes.txt", "not an image file"


def _thumbs_db(split: Path) -> tuple[Path, str]:
    (split / "B" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0 thumbnail cache")
    return split / "B" / "Thumbs.db", "not an image file"


def _symlink_loop(split: Path) -> tuple[Path, str]:
    loop = split / "A" / "loop.png"
    loop.symlink_to(loop)
    return loop, "unusable symbolic link"


@pytest.mark.parametrize(
    ("split", "corrupt"),
    [
        pytest.param("train", _truncated_png, id="truncated-png"),
        pytest.param("val", _garbage_png, id="corrupt-png-garbage-bytes"),
        pytest.param("train", _zero_byte, id="zero-byte-file"),
        pytest.param("val", _a_b_sizes_differ, id="a-b-sizes-differ"),
        pytest.param("train", _a_label_sizes_differ, id="a-label-sizes-differ"),
        pytest.param("train", _labels_0_1_2, id="labels-0-1-2"),
        pytest.param("val", _rgb_colour_label, id="rgb-colour-label"),
        pytest.param("train", _notes_txt, id="non-image-notes-txt"),
        pytest.param("val", _thumbs_db, id="non-image-thumbs-db"),
        pytest.param("train", _symlink_loop, id="symlink-loop"),
    ],
)
def test_bad_file_stops_training_with_one_line(
    tmp_path: Path,
    fails_with_one_line: Callable[..., str],
    split: str,
    corrupt: Callable[[Path], tuple[Path, str]],
) -> None:
    root, run_dir = tiny_dataset(tmp_path / "ds"), tmp_path / "run"
    bad, problem = corrupt(root / split)
    err = fails_with_one_line("train", *train_overrides(root, run_dir))
    assert f"{bad}: " in err and problem in err
    assert_run_not_started(run_dir)
    assert not cache_path(root / ".cdkd_cache", root / split).exists()
    assert_no_temporaries(tmp_path)


def test_truncated_tiff_stops_training_with_one_line(
    tmp_path: Path, fails_with_one_line: Callable[..., str]
) -> None:
    root, run_dir = tiny_dataset(tmp_path / "ds", suffix=".tif"), tmp_path / "run"
    bad = root / "train" / "B" / "2.tif"
    truncate(bad)
    err = fails_with_one_line("train", *train_overrides(root, run_dir))
    assert f"{bad}: unreadable or corrupt image" in err
    assert_run_not_started(run_dir)
    assert not cache_path(root / ".cdkd_cache", root / "train").exists()
    assert_no_temporaries(tmp_path)


def test_names_with_spaces_and_unicode_train_and_evaluate_end_to_end(
    tmp_path: Path, compose_config: Composer
) -> None:
    names = ("scene one", "Überschwemmung 2023", "变化 3", "n° 4")
    root, run_dir = tiny_dataset(tmp_path / "ds", names=names), tmp_path / "run"
    (root / "train" / "A" / ".DS_Store").write_bytes(b"hidden junk is skipped")
    cfg = compose_config("train", *train_overrides(root, run_dir, "test_after_fit=true"))
    assert np.isfinite(task("train")(cfg))
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["val"]["count"] == 2 and metrics["test"]["count"] == 2
    per_image = (run_dir / "eval" / "test" / "per_image.csv").read_text(encoding="utf-8")
    assert "scene one.png" in per_image and "Überschwemmung 2023.png" in per_image
    assert (run_dir / "best.ckpt").is_file() and (run_dir / "provenance.json").is_file()
    assert_no_temporaries(tmp_path)


# --- GeoTIFF scenes given to `python -m cdkd.predict` -----------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cdkd training checkpoint of a randomly initialised ``fc_ef``."""
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / f"{MODEL}.ckpt", MODEL)


def write_float_scene(path: Path, data: np.ndarray) -> Path:
    """``data [3, H, W]`` float32 as a georeferenced GeoTIFF without a nodata value."""
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=data.shape[2],
        height=data.shape[1],
        count=3,
        dtype="float32",
        crs="EPSG:32633",
        transform=Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5600000.0),
    ) as dst:
        dst.write(data)
    return path


def test_nan_and_inf_in_a_geotiff_are_written_as_nodata(
    tmp_path: Path, checkpoint: Path, compose_config: Composer
) -> None:
    rng = np.random.default_rng(4)
    a, b = rng.random((2, 3, 40, 48), dtype=np.float32)
    a[:, 5:8, 10:14] = np.nan
    b[2, 30, 40] = np.inf
    b[0, 0, 0] = -np.inf
    t1, t2 = write_float_scene(tmp_path / "t1.tif", a), write_float_scene(tmp_path / "t2.tif", b)
    out = tmp_path / "maps" / "change.tif"
    cfg = compose_config(
        "predict",
        f"model={MODEL}",
        f"weights={checkpoint}",
        f"image1={t1}",
        f"image2={t2}",
        f"output={out}",
        "scale=1",
        "device=cpu",
    )
    task("predict")(cfg)
    with rasterio.open(out) as src:
        mask, nodata = src.read(1), src.nodata
    invalid = np.zeros((40, 48), bool)
    invalid[5:8, 10:14] = invalid[30, 40] = invalid[0, 0] = True
    assert nodata == MASK_NODATA
    np.testing.assert_array_equal(mask == MASK_NODATA, invalid)
    assert set(np.unique(mask[~invalid]).tolist()) <= {0, 255}
    assert_no_temporaries(tmp_path)


def test_unreadable_pair_gets_no_prediction_and_a_non_zero_exit(
    tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str], compose_config: Composer
) -> None:
    for folder in ("A", "B"):
        (tmp_path / "in" / folder).mkdir(parents=True)
        for name in ("good", "bad"):
            rgb_image(32, 32).save(tmp_path / "in" / folder / f"{name}.png")
    bad = tmp_path / "in" / "B" / "bad.png"
    truncate(bad)
    out = tmp_path / "out"
    cfg = compose_config(
        "predict",
        f"model={MODEL}",
        f"weights={checkpoint}",
        f"input={tmp_path / 'in'}",
        f"output={out}",
        "device=cpu",
    )
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        task("predict")(cfg)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 1
    assert len(err.splitlines()) == 1 and f"skipped: {bad}: unreadable or corrupt" in err, err
    assert sorted(p.name for p in out.iterdir()) == ["good.png"]
    assert_no_temporaries(tmp_path)


# --- checkpoints given to `python -m cdkd.eval`, `cdkd.predict` and as a resume source --------


def _cdkd_checkpoint_of_another_model(path: Path) -> str:
    save_checkpoint(path, "fc_siam_diff")
    return f"{path}: checkpoint is for model 'fc_siam_diff', not '{MODEL}'"


def _pickled_network_of_another_model(path: Path) -> str:
    torch.save(create_model("fc_siam_diff"), path)  # a whole pickled module, not weights
    return f"{path}: unreadable or truncated checkpoint (Weights only load failed)"


@pytest.mark.parametrize(
    "write",
    [
        pytest.param(_cdkd_checkpoint_of_another_model, id="cdkd-checkpoint"),
        pytest.param(_pickled_network_of_another_model, id="pickled-network"),
    ],
)
def test_checkpoint_of_another_model_is_refused_by_eval(
    tmp_path: Path, eval_fails: Callable[[Path, Path, Path], str], write: Callable[[Path], str]
) -> None:
    root = tiny_dataset(tmp_path / "ds")
    other = tmp_path / "other.ckpt"
    expected = write(other)
    out_dir = tmp_path / "eval"
    err = eval_fails(root, other, out_dir)
    assert err == f"error: {expected}"
    assert not out_dir.exists()
    assert not (root / ".cdkd_cache").exists()
    assert_no_temporaries(tmp_path)


def test_weights_of_another_model_are_refused_by_predict(
    tmp_path: Path, fails_with_one_line: Callable[..., str]
) -> None:
    other = save_checkpoint(tmp_path / "other.ckpt", "fc_siam_diff")
    for folder in ("A", "B"):
        (tmp_path / "in" / folder).mkdir(parents=True)
        rgb_image(32, 32).save(tmp_path / "in" / folder / "x.png")
    out = tmp_path / "out"
    err = fails_with_one_line(
        "predict",
        f"model={MODEL}",
        f"weights={other}",
        f"input={tmp_path / 'in'}",
        f"output={out}",
        "device=cpu",
    )
    assert err == f"error: {other}: checkpoint is for model 'fc_siam_diff', not '{MODEL}'"
    assert not out.exists()
    assert_no_temporaries(tmp_path)


def test_truncated_checkpoint_is_refused_by_eval(
    tmp_path: Path, checkpoint: Path, eval_fails: Callable[[Path, Path, Path], str]
) -> None:
    root = tiny_dataset(tmp_path / "ds")
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    out_dir = tmp_path / "eval"
    err = eval_fails(root, cut, out_dir)
    assert f"{cut}: unreadable or truncated checkpoint (PytorchStreamReader failed" in err
    assert not out_dir.exists()
    assert_no_temporaries(tmp_path)


@pytest.mark.parametrize("source", ["ckpt_path", "last.ckpt"])
def test_truncated_checkpoint_is_refused_as_resume_source(
    tmp_path: Path, checkpoint: Path, fails_with_one_line: Callable[..., str], source: str
) -> None:
    root, run_dir = tiny_dataset(tmp_path / "ds"), tmp_path / "run"
    run_dir.mkdir()
    cut = run_dir / "last.ckpt" if source == "last.ckpt" else tmp_path / "cut.ckpt"
    cut.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    before = cut.read_bytes()
    extra = [f"ckpt_path={cut}"] if source == "ckpt_path" else []
    err = fails_with_one_line("train", *train_overrides(root, run_dir, *extra))
    assert f"{cut}: unreadable or truncated checkpoint" in err
    assert cut.read_bytes() == before  # neither replaced nor moved aside
    expected = ["last.ckpt"] if source == "last.ckpt" else []
    assert sorted(p.name for p in run_dir.iterdir()) == expected
    assert_no_temporaries(tmp_path)


# --- Hydra overrides -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        pytest.param(
            "distill.lamda=0.1",
            "error: Could not override 'distill.lamda': Key 'lamda' is not in struct. "
            "To append to your config use +distill.lamda=0.1",
            id="unknown-key",
        ),
        pytest.param(
            "model=tinycdd",
            "error: In 'train': Could not find 'model/tinycdd' (available: ban_vit_b, ",
            id="unknown-option",
        ),
        pytest.param(
            "data.batch_size=[", "error: no viable alternative at input '['", id="bad-syntax"
        ),
    ],
)
def test_config_composition_errors_are_one_line_and_exit_1(
    tmp_path: Path, override: str, expected: str
) -> None:
    """Hydra rejects these before the task starts: only a real process shows the report."""
    err = run_tool("cdkd.train", override, cwd=tmp_path, code=1).stderr.strip()
    assert sorted(tmp_path.iterdir()) == []  # no run or output folder
    assert len(err.splitlines()) == 1, err
    assert err.startswith(expected), err


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        pytest.param(
            ["stage=student", "distill.lambda=-0.1"],
            ["distill.lambda = -0.1 must be >= 0"],
            id="negative-lambda",
        ),
        pytest.param(
            ["partition.thresholds=[0.2,0.05]"],
            ["partition 'three'", "thresholds [0.2, 0.05]", "strictly increasing"],
            id="thresholds-out-of-order",
        ),
        pytest.param(
            ["partition.thresholds=[0.1,0.1]"],
            ["partition 'three'", "thresholds [0.1, 0.1]", "strictly increasing"],
            id="th1-equals-th2",
        ),
        pytest.param(
            ["partition.thresholds=[0.05,1.5]"],
            ["partition 'three'", "thresholds [0.05, 1.5]", "must lie in [0, 1]"],
            id="threshold-above-1",
        ),
        pytest.param(
            ["trainer.max_steps=0"],
            ["trainer.max_steps = 0 must be a positive integer"],
            id="zero-trainer-steps",
        ),
    ],
)
def test_out_of_range_override_stops_before_anything_is_written(
    tmp_path: Path, fails_with_one_line: Callable[..., str], overrides: list[str], words: list[str]
) -> None:
    root, run_dir = tiny_dataset(tmp_path / "ds"), tmp_path / "run"
    err = fails_with_one_line("train", *train_overrides(root, run_dir, *overrides))
    assert all(word in err for word in words), err
    assert not run_dir.exists()
    assert not (root / ".cdkd_cache").exists()
    assert_no_temporaries(tmp_path)
