"""The README stays an overview whose links reach the documentation pages."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_keeps_the_test_command_that_ci_runs() -> None:
    line = "make test   # install, type-check and run the test suite (CPU only, no network)"
    assert line in README.splitlines()


def test_readme_links_to_documentation_pages_that_exist() -> None:
    targets = re.findall(r"\]\((docs/[^)#]+)", README)
    assert len(targets) >= 10
    missing = [target for target in targets if not (ROOT / target).exists()]
    assert missing == []


def test_readme_lists_the_deviations_with_their_options() -> None:
    section = README.split("## Deviations from the paper and the official code", 1)[1]
    section = section.split("\n## ", 1)[0]
    options = ("distill.car_rule=official", "data.label_threshold=128", "model.loss.dice=binary")
    assert [option for option in options if option not in section] == []
