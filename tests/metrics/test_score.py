"""The score CLI and score_folders on tiny generated folder pairs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cdkd.data.io import write_mask
from cdkd.errors import DataError
from cdkd.metrics import ChangeMetrics
from cdkd.metrics.score import score_folders
from tests.factories import run_tool


def make_pair(root: Path, n: int = 4, size: int = 32) -> tuple[Path, Path, list[tuple]]:
    """Write ``n`` prediction/ground-truth PNG pairs; return the folders and the arrays."""
    rng = np.random.default_rng(0)
    pred_dir, gt_dir = root / "pred", root / "gt"
    arrays = []
    for i in range(n):
        ratio = i / (2 * n)
        gt = rng.random((size, size)) < ratio
        pred = rng.random((size, size)) < ratio
        write_mask(gt_dir / f"{i}.png", gt)
        write_mask(pred_dir / f"{i}.png", pred)
        arrays.append((pred, gt))
    return pred_dir, gt_dir, arrays


def direct(arrays: list[tuple], policy: str = "one") -> dict:
    metric = ChangeMetrics(empty_policy=policy)
    for pred, gt in arrays:
        metric.update(torch.from_numpy(pred), torch.from_numpy(gt.astype(np.int64)))
    return metric.compute()


def test_cli_writes_json_matching_the_metric(tmp_path: Path) -> None:
    pred_dir, gt_dir, arrays = make_pair(tmp_path)
    out = tmp_path / "res" / "score.json"
    proc = run_tool("cdkd.score", f"pred={pred_dir}", f"gt={gt_dir}", f"out={out}", cwd=tmp_path)
    assert "per-image averaged" in proc.stdout
    data = json.loads(out.read_text())
    reference = direct(arrays)
    assert data["count"] == 4
    assert data["empty_policy"] == "one"
    for field in ("per_image", "pooled"):
        assert data[field] == pytest.approx(reference[field], abs=1e-12)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gt", "pred", "res"]


def test_cli_missing_prediction_is_one_line(tmp_path: Path) -> None:
    pred_dir, gt_dir, _ = make_pair(tmp_path)
    (pred_dir / "2.png").unlink()
    out = tmp_path / "score.json"
    proc = run_tool(
        "cdkd.score", f"pred={pred_dir}", f"gt={gt_dir}", f"out={out}", cwd=tmp_path, code=1
    )
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "2.png" in lines[0]
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_score_folders_policy_and_zero_one_masks(tmp_path: Path) -> None:
    pred_dir, gt_dir, arrays = make_pair(tmp_path)
    # Rewrite one ground truth as a 0/1 PNG: the same labels, another encoding.
    Image.fromarray(arrays[1][1].astype(np.uint8)).save(gt_dir / "1.png")
    result = score_folders(pred_dir, gt_dir, empty_policy="skip")
    assert result["empty_policy"] == "skip"
    assert result["per_image"] == pytest.approx(direct(arrays, "skip")["per_image"], abs=1e-12)


def test_score_folders_matches_by_stem(tmp_path: Path) -> None:
    pred_dir, gt_dir, _ = make_pair(tmp_path, n=2)
    (gt_dir / "0.png").rename(gt_dir / "0.tif")
    assert score_folders(pred_dir, gt_dir)["count"] == 2


def test_score_folders_reports_every_unmatched_file(tmp_path: Path) -> None:
    pred_dir, gt_dir, _ = make_pair(tmp_path, n=8)
    for i in range(7):
        (pred_dir / f"{i}.png").unlink()
    write_mask(pred_dir / "extra.png", np.zeros((32, 32), dtype=bool))
    with pytest.raises(DataError) as info:
        score_folders(pred_dir, gt_dir)
    message = str(info.value)
    assert "\n" not in message
    assert "7 ground-truth mask(s)" in message
    assert "0.png, 1.png, 2.png, 3.png, 4.png, ... (7 in all)" in message
    assert "1 prediction(s)" in message
    assert "extra.png" in message


def test_score_folders_size_mismatch_names_the_file(tmp_path: Path) -> None:
    pred_dir, gt_dir, _ = make_pair(tmp_path, n=2)
    write_mask(pred_dir / "1.png", np.zeros((16, 32), dtype=bool))
    with pytest.raises(DataError, match=r"1\.png: size 32x16 differs"):
        score_folders(pred_dir, gt_dir)


def test_score_folders_missing_folder(tmp_path: Path) -> None:
    _, gt_dir, _ = make_pair(tmp_path, n=1)
    with pytest.raises(DataError, match="prediction folder not found"):
        score_folders(tmp_path / "nope", gt_dir)


def test_score_folders_binarises_intermediate_ground_truth_on_request(tmp_path: Path) -> None:
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    pred = np.zeros((4, 4), dtype=np.uint8)
    pred[:2] = 1
    write_mask(tmp_path / "pred" / "a.png", pred)
    jpeg_like = np.zeros((4, 4), dtype=np.uint8)
    jpeg_like[:2] = 250  # change saved with compression noise
    jpeg_like[2, 0] = 3
    Image.fromarray(jpeg_like).save(tmp_path / "gt" / "a.png")
    with pytest.raises(DataError, match="label_threshold"):
        score_folders(tmp_path / "pred", tmp_path / "gt")
    result = score_folders(tmp_path / "pred", tmp_path / "gt", label_threshold=128)
    assert result["per_image"]["mIoU"] == pytest.approx(1.0)
