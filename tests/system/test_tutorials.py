"""The documentation's tutorials run end to end at their tiny size and are on the site.

Running them is ``slow``: ``make docs`` (part of CI) executes both at the same tiny size, and
the default suite runs the same pipeline in tests/system/test_pipeline_e2e.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import rasterio

ROOT = Path(__file__).resolve().parents[2]
TUTORIALS = sorted((ROOT / "docs" / "tutorials").glob("*.py"))


def run_tutorial(path: Path, tmp_path: Path) -> Path:
    """Run one tutorial as a script in ``tmp_path``; fail the test if it raises."""
    work = tmp_path / "work"
    env = {
        **os.environ,
        "CDKD_TUTORIAL_SIZE": "tiny",
        "CDKD_TUTORIAL_DIR": str(work),
        "MPLBACKEND": "Agg",
        # Tiny tensors: one thread each, as the rest of the suite computes.
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [sys.executable, str(path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"{path.name} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return work


def test_every_tutorial_is_on_the_site() -> None:
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert len(TUTORIALS) >= 2
    missing = [p.name for p in TUTORIALS if f"tutorials/{p.name}" not in nav]
    assert missing == []


@pytest.mark.slow
def test_synthetic_pipeline_tutorial(tmp_path: Path) -> None:
    work = run_tutorial(ROOT / "docs" / "tutorials" / "synthetic_pipeline.py", tmp_path)
    model_dir = work / "runs" / "synthetic" / "fc_siam_diff"
    results = (model_dir / "results.md").read_text(encoding="utf-8")
    for row in ("| - |", "| O-P |", "| MTKD |"):
        assert row in results
    for name in ("car_distribution.png", "car_ranges-test.png", "visual-test.png"):
        assert (model_dir / "analysis" / name).stat().st_size > 0, name


@pytest.mark.slow
def test_geotiff_scene_tutorial(tmp_path: Path) -> None:
    work = run_tutorial(ROOT / "docs" / "tutorials" / "geotiff_scene.py", tmp_path)
    with rasterio.open(work / "2019.tif") as scene, rasterio.open(work / "change.tif") as change:
        assert change.count == 1 and change.shape == scene.shape
        assert change.crs == scene.crs and change.transform == scene.transform
    assert (work / "change_overlay.png").is_file()
