"""The distillation study's machinery end to end at a tiny size (slow: 23 runs per chain)."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "scripts" / "study.py"


@pytest.mark.slow
def test_the_study_trains_every_recipe_and_tabulates_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Imported by name from scripts/, so that the study's worker processes import it too.
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    monkeypatch.delitem(sys.modules, "study", raising=False)
    study = importlib.import_module("study")
    monkeypatch.setenv("CDKD_DATA_DIR", str(tmp_path / "data"))
    runs = tmp_path / "runs"
    study.main(["--tiny", "--seeds", "0", "--workers", "1", "--runs", str(runs), "--no-doc"])
    for recipe in study.RECIPES:
        for lam in recipe.lambdas:
            for model in study.MODELS:
                run = runs / "seed0" / model / recipe.run_folder(lam)
                assert study.test_miou(run) is not None, run
        # the selected student is one of the grid's, the best on validation
        picked = study.selected(runs / "seed0" / study.MODELS[0], recipe)
        assert picked is not None and picked[0] in recipe.lambdas
    text = study.table(runs, [0], ("experiment=study", *study.TINY))
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    results = [row for row in rows if not row.startswith(("| recipe", "| network"))]
    every = sum(len(recipe.lambdas) for recipe in study.RECIPES)
    assert len(results) == 2 + len(study.RECIPES) + every + 4 + len(study.CROSS_RECIPES)
    assert all(re.search(r"\| \d+\.\d\d ± 0\.00 \(n=1\)", row) for row in results)
