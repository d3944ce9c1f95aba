"""Analysis figures and tables read from a hand-made run tree (no model is run)."""

from __future__ import annotations

import csv
import itertools
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cdkd.analysis.analyze import Analysis, run_analysis
from cdkd.analysis.compare import (
    MissingInput,
    PerImage,
    align,
    car_distribution_rows,
    car_groups,
    car_range_rows,
    class_differences,
    class_markdown,
    collect_results,
    read_per_image,
    results_csv,
    results_markdown,
    top_images,
)
from cdkd.analysis.figures import (
    FALSE_NEGATIVE,
    FALSE_POSITIVE,
    TRUE_NEGATIVE,
    TRUE_POSITIVE,
    PanelColumn,
    visual_panel,
)
from cdkd.cli.pipeline import compose_config
from cdkd.errors import ConfigError, DataError
from cdkd.metrics import METRIC_KEYS
from cdkd.partition import PartitionScheme
from tests.factories import run_tool

SIZE = 32
TEST_IMAGES = 10
STRATEGIES = ("original", "op", "mtkd")
#: Per-image mIoU of each strategy on test images 0..9 (ascending CAR by construction).
MIOU = {
    "original": [0.50, 0.60, 0.70, 0.20, 0.90, 0.80, 0.70, 0.60, 0.50, 0.40],
    "op": [0.52, 0.62, 0.70, 0.55, 0.90, 0.81, 0.69, 0.60, 0.52, 0.40],
    "mtkd": [0.56, 0.64, 0.72, 0.75, 0.91, 0.80, 0.70, 0.61, 0.50, 0.42],
}
#: Per-image averaged metrics.json values of original and MTKD for Table IV.
ORIGINAL = {
    "IoU_unchanged": 0.9712,
    "IoU_changed": 0.4538,
    "Acc_unchanged": 0.9850,
    "Acc_changed": 0.5725,
    "Precision_unchanged": 0.9861,
    "Precision_changed": 0.7045,
    "Fscore_unchanged": 0.9800,
    "Fscore_changed": 0.5666,
}
MTKD = {
    "IoU_unchanged": 0.9736,
    "IoU_changed": 0.4809,
    "Acc_unchanged": 0.9879,
    "Acc_changed": 0.5969,
    "Precision_unchanged": 0.9865,
    "Precision_changed": 0.7067,
    "Fscore_unchanged": 0.9812,
    "Fscore_changed": 0.5948,
}


def label_of(index: int) -> np.ndarray:
    """Test label ``index``: its first ``3 * index`` rows changed (CAR = 3 * index / 32)."""
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[: 3 * index] = 1
    return mask


def write_pair(split_dir: Path, name: str, mask: np.ndarray, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for folder in ("A", "B"):
        (split_dir / folder).mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(split_dir / folder / name)
    (split_dir / "label").mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask * 255).save(split_dir / "label" / name)


def write_per_image(path: Path, names: list[str], cars: list[float], miou: list[float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["name", "car", *METRIC_KEYS])
        for name, car, value in zip(names, cars, miou, strict=True):
            writer.writerow([name, f"{car:.6f}", f"{value:.6f}", *(["0.5"] * 11)])


def write_prediction(folder: Path, name: str, mask: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(folder / name)


def build_tree(root: Path, predictions: bool = True) -> dict[str, Path]:
    """A folder dataset, the three evaluations of ``tinycd`` and two models' results.json."""
    data = root / "data"
    for split, count in (("train", 6), ("val", 3)):
        for i in range(count):
            write_pair(data / split, f"{i}.png", label_of(i % 4), seed=100 + i)
    names = [f"{i}.png" for i in range(TEST_IMAGES)]
    for i, name in enumerate(names):
        write_pair(data / "test", name, label_of(i), seed=i)
    model_dir = root / "runs" / "folder" / "tinycd"
    cars = [3 * i / SIZE for i in range(TEST_IMAGES)]
    for strategy in STRATEGIES:
        folder = model_dir / "eval" / strategy / "test"
        write_per_image(folder / "per_image.csv", names, cars, MIOU[strategy])
        per_image = {"mIoU": float(np.mean(MIOU[strategy])), **ORIGINAL}
        if strategy == "mtkd":
            per_image.update(MTKD)
        metrics = {"count": TEST_IMAGES, "per_image": per_image, "pooled": per_image}
        (folder / "metrics.json").write_text(json.dumps(metrics))
        if predictions:
            for i, name in enumerate(names):
                write_prediction(folder / "predictions", name, label_of(i))
    if predictions:
        # Image 3 (first 9 rows changed): original misses everything, MTKD adds rows 20-23.
        write_prediction(model_dir / "eval/original/test/predictions", "3.png", label_of(0))
        extra = label_of(3)
        extra[20:24] = 1
        write_prediction(model_dir / "eval/mtkd/test/predictions", "3.png", extra)
    for model, miou in (("tinycd", 0.7123), ("fc_ef", 0.6101)):
        rows = {
            label: {"mIoU": miou + delta, "mAcc": 0.8, "mPrecision": 0.85, "mFscore": 0.77}
            for label, delta in (("-", 0.0), ("O-P", 0.001), ("MTKD", 0.01))
        }
        result = {"model": model, "data": "folder", "partition": "three", "lambda": 0.005}
        (root / "runs" / "folder" / model).mkdir(parents=True, exist_ok=True)
        (root / "runs" / "folder" / model / "results.json").write_text(
            json.dumps({**result, "rows": rows})
        )
    return {"data": data, "runs": root / "runs", "model_dir": model_dir}


def overrides(tree: dict[str, Path], *extra: str) -> list[str]:
    return [
        "data=folder",
        f"data.root={tree['data']}",
        "data.num_workers=0",
        f"paths.runs_dir={tree['runs']}",
        *extra,
    ]


def per_image(path: str, names: list[str], cars: list[float], miou: list[float]) -> PerImage:
    scores = {key: np.full(len(names), 0.5) for key in METRIC_KEYS}
    scores["mIoU"] = np.asarray(miou)
    return PerImage(Path(path), tuple(names), np.asarray(cars), scores)


def test_car_groups_have_equal_counts_and_sorted_bounds() -> None:
    rng = np.random.default_rng(0)
    cars = rng.random(20) ** 3
    names = [f"{i}.png" for i in range(20)]
    groups = car_groups(names, cars, 5)
    assert [len(g) for g in groups] == [4] * 5
    order = np.argsort(cars, kind="stable")
    for k, group in enumerate(groups):
        assert sorted(group.positions.tolist()) == sorted(order[4 * k : 4 * k + 4].tolist())
        assert group.lower == cars[order[4 * k]] and group.upper == cars[order[4 * k + 3]]
    bounds = [(g.lower, g.upper) for g in groups]
    assert all(lo <= hi for lo, hi in bounds)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(bounds))
    assert [len(g) for g in car_groups(names[:11], cars[:11], 5)] == [3, 2, 2, 2, 2]
    with pytest.raises(ConfigError):
        car_groups(names[:3], cars[:3], 5)


def test_car_range_rows_average_each_group() -> None:
    names = [f"{i}.png" for i in range(6)]
    cars = [0.30, 0.00, 0.10, 0.02, 0.50, 0.05]
    runs = {
        "original": per_image("o.csv", names, cars, [0.9, 0.5, 0.6, 0.7, 0.2, 0.4]),
        # Same images in another order: rows are matched by name.
        "mtkd": per_image("m.csv", names[::-1], cars[::-1], [0.3, 0.8, 0.6, 0.9, 0.7, 0.95]),
    }
    rows = car_range_rows(runs, groups=3)
    # Sorted by CAR: 1 (0.00), 3 (0.02) | 5 (0.05), 2 (0.10) | 0 (0.30), 4 (0.50).
    assert [(r["car_min"], r["car_max"], r["count"]) for r in rows] == [
        (0.0, 0.02, 2),
        (0.05, 0.10, 2),
        (0.30, 0.50, 2),
    ]
    assert [r["original"] for r in rows] == pytest.approx([0.6, 0.5, 0.55])
    # mtkd values by name: 5->0.3, 4->0.8, 3->0.6, 2->0.9, 1->0.7, 0->0.95.
    assert [r["mtkd"] for r in rows] == pytest.approx([0.65, 0.6, 0.875])


def test_align_rejects_runs_of_different_images() -> None:
    a = per_image("a.csv", ["1.png", "2.png"], [0.0, 0.1], [0.5, 0.5])
    b = per_image("b.csv", ["1.png", "3.png"], [0.0, 0.1], [0.5, 0.5])
    with pytest.raises(DataError, match=r"b\.csv: images differ from a\.csv.*2\.png"):
        align({"original": a, "mtkd": b})


def test_read_per_image_reports_bad_files(tmp_path: Path) -> None:
    with pytest.raises(MissingInput, match=r"per_image\.csv: not found; run this"):
        read_per_image(tmp_path / "per_image.csv", "run this")
    bad = tmp_path / "bad.csv"
    bad.write_text("name,car,mIoU\n1.png,0.1,0.5\n")
    with pytest.raises(DataError, match=r"bad\.csv: missing column\(s\) mAcc"):
        read_per_image(bad)
    write_per_image(bad, ["1.png", "2.png"], [0.0, 0.1], [0.5, 0.6])
    bad.write_text(bad.read_text().replace("0.600000", "abc"))
    with pytest.raises(DataError, match=r"bad\.csv: line 3"):
        read_per_image(bad)


def test_top_images_picks_the_largest_spread() -> None:
    names = ["a.png", "b.png", "c.png", "d.png"]
    cars = [0.1, 0.2, 0.3, 0.4]
    runs = {
        "original": per_image("o", names, cars, [0.5, 0.5, 0.2, 0.9]),
        "op": per_image("p", names, cars, [0.5, 0.9, 0.6, 0.9]),
        "mtkd": per_image("m", names, cars, [0.6, 0.6, 0.7, 0.85]),
    }
    # Spreads: a 0.1, b 0.4, c 0.5, d 0.05.
    assert top_images(runs, 2) == ["c.png", "b.png"]
    assert top_images(runs, 10) == ["c.png", "b.png", "a.png", "d.png"]


def test_class_differences_are_hand_computed_points() -> None:
    diff = class_differences(ORIGINAL, {**MTKD, "Precision_changed": None})
    assert diff["unchanged"]["IoU"] == pytest.approx(0.24)
    assert diff["changed"]["IoU"] == pytest.approx(2.71)
    assert diff["unchanged"]["Acc"] == pytest.approx(0.29)
    assert diff["changed"]["Acc"] == pytest.approx(2.44)
    assert diff["unchanged"]["Precision"] == pytest.approx(0.04)
    assert diff["changed"]["Fscore"] == pytest.approx(2.82)
    assert math.isnan(diff["changed"]["Precision"])
    text = class_markdown({"IFN": diff}, "Table IV")
    lines = text.splitlines()
    assert lines[2] == "_difference in percentage points, per-image averaged_"
    assert lines[4] == "| Method | Class | IoU | Acc | Precision | Fscore |"
    assert lines[6] == "| IFN | unchanged | +0.24 | +0.29 | +0.04 | +0.12 |"
    assert lines[7] == "|  | changed | +2.71 | +2.44 | n/a | +2.82 |"


def test_car_distribution_counts_follow_the_partition_rule() -> None:
    scheme = PartitionScheme.create("three")
    cars = {"train": np.array([0.0, 0.05, 0.0500001, 0.2, 0.21, 1.0]), "test": np.array([0.0])}
    rows = car_distribution_rows(cars, scheme)
    assert rows[0] == {
        "split": "train",
        "count": 6,
        "small": 2,
        "medium": 2,
        "large": 2,
        "no_change": 1,
        "median_car": pytest.approx(0.125),
    }
    assert rows[1]["small"] == 1 and rows[1]["no_change"] == 1


def test_visual_panel_colours_errors_at_known_pixels(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    label = np.zeros((SIZE, SIZE), dtype=np.uint8)
    label[:8] = 1
    pred = np.zeros_like(label)
    pred[:8, :16] = 1  # rows 0-7: TP left, FN right
    pred[20:24] = 1  # FP
    image1 = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    column = PanelColumn(
        "1.png", image1, image1, label, {"Original": np.zeros_like(label), "MTKD": pred}, {}
    )
    path = tmp_path / "panel.png"
    layout = visual_panel([column, column], path, cell=64)
    panel = np.asarray(Image.open(path).convert("RGB"))
    assert panel.shape[:2] == layout.size

    def at(row: str, y: int, x: int, column: int = 1) -> tuple[int, ...]:
        py, px = layout.locate(row, column, y, x)
        return tuple(int(v) for v in panel[py, px])

    assert at("MTKD", 2, 3) == TRUE_POSITIVE
    assert at("MTKD", 2, 30) == FALSE_NEGATIVE  # GT=1, pred=0: red
    assert at("MTKD", 21, 10) == FALSE_POSITIVE  # GT=0, pred=1: blue
    assert at("MTKD", 30, 30) == TRUE_NEGATIVE
    assert at("Original", 5, 5) == FALSE_NEGATIVE
    assert at("GT", 5, 5) == (255, 255, 255) and at("GT", 12, 5) == (0, 0, 0)
    assert at("T1", 7, 9, column=0) == tuple(int(v) for v in image1[7, 9])


def test_models_table_lists_every_model(tmp_path: Path) -> None:
    tree = build_tree(tmp_path, predictions=False)
    results = collect_results(tree["runs"] / "folder")
    assert [r["model"] for r in results] == ["fc_ef", "tinycd"]
    text = results_markdown(results, "Table III")
    assert "| fc_ef | - | 61.01 |" in text and "| tinycd | - | 71.23 |" in text
    assert "|  | MTKD | 72.23 |" in text
    rows = list(csv.DictReader(results_csv(results).splitlines()))
    assert len(rows) == 6 and {r["model"] for r in rows} == {"fc_ef", "tinycd"}
    assert float(rows[0]["mIoU"]) == pytest.approx(0.6101)
    with pytest.raises(MissingInput, match=r"cdkd\.pipeline"):
        collect_results(tmp_path / "nowhere")


def test_named_visual_without_predictions_says_what_to_run(tmp_path: Path) -> None:
    tree = build_tree(tmp_path, predictions=False)
    cfg = compose_config("analyze", overrides(tree, "what=visual"))
    analysis = Analysis(cfg, ("data=folder",))
    with pytest.raises(MissingInput, match="strategy=original data=folder save_predictions=true"):
        run_analysis(analysis)
    cfg = compose_config("analyze", overrides(tree, "what=[ranges,classes,visual]"))
    with pytest.raises(MissingInput, match="predictions"):
        run_analysis(Analysis(cfg))


def test_unknown_image_or_item_is_a_config_error(tmp_path: Path) -> None:
    tree = build_tree(tmp_path)
    cfg = compose_config("analyze", overrides(tree, "what=visual", "images=[x.png]"))
    with pytest.raises(
        ConfigError, match=re.escape(f"images: x.png is not in the test split of {tree['data']}")
    ):
        run_analysis(Analysis(cfg))
    cfg = compose_config("analyze", overrides(tree, "what=plots"))
    with pytest.raises(ConfigError, match="what=plots: use all or one or more of car, ranges"):
        run_analysis(Analysis(cfg))


def test_all_skips_missing_predictions_and_writes_the_rest(tmp_path: Path) -> None:
    tree = build_tree(tmp_path, predictions=False)
    cfg = compose_config("analyze", overrides(tree, "what=all"))
    written, notes = run_analysis(Analysis(cfg))
    assert len(notes) == 1 and notes[0].startswith("visual skipped:")
    out = tree["model_dir"] / "analysis"
    assert out / "car_ranges-test.csv" in written
    rows = list(csv.DictReader((out / "car_ranges-test.csv").open()))
    assert [int(r["count"]) for r in rows] == [2] * 5
    # Group k holds test images 2k and 2k+1 (CAR rises with the index).
    for k, row in enumerate(rows):
        for strategy in STRATEGIES:
            expected = (MIOU[strategy][2 * k] + MIOU[strategy][2 * k + 1]) / 2
            assert float(row[strategy]) == pytest.approx(expected, abs=1e-6)
        assert float(row["car_min"]) == pytest.approx(6 * k / SIZE, abs=1e-6)
    classes = (out / "classes-test.md").read_text()
    assert "| MTKD − Original | unchanged | +0.24 | +0.29 | +0.04 | +0.12 |" in classes
    assert "|  | changed | +2.71 | +2.44 | +0.22 | +2.82 |" in classes
    distribution = list(csv.DictReader((out / "car_distribution.csv").open()))
    assert [(r["split"], int(r["count"])) for r in distribution] == [
        ("train", 6),
        ("val", 3),
        ("test", 10),
    ]
    # Test CARs 3i/32: 0 is small, 3/32 medium (<= 0.2 up to i = 2), the rest large.
    assert (distribution[2]["small"], distribution[2]["medium"]) == ("1", "2")
    across = (tree["runs"] / "folder" / "classes-test.md").read_text()
    assert "| tinycd | unchanged | +0.24 |" in across and "fc_ef" not in across


def test_cli_writes_every_item(tmp_path: Path) -> None:
    tree = build_tree(tmp_path)
    args = [*overrides(tree), "images=[3.png,5]", "cell=48"]
    proc = run_tool("cdkd.analyze", *args, cwd=tmp_path)
    out = tree["model_dir"] / "analysis"
    names = [
        "car_distribution.png",
        "car_distribution.md",
        "car_ranges-test.png",
        "car_ranges-test.md",
        "classes-test.md",
        "visual-test.png",
    ]
    for name in names:
        assert (out / name).is_file(), name
        assert f"written: {out / name}" in proc.stdout
    for name in ("results.md", "results.csv", "classes-test.md"):
        assert (tree["runs"] / "folder" / name).is_file(), name
    panel = Image.open(out / "visual-test.png")
    assert panel.width > 2 * 48 and panel.height > 6 * 48
