"""The model-zoo page is generated from the code and must match it."""

from pathlib import Path

from cdkd.analysis.zoo import zoo_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "models.md"


def test_model_zoo_page_is_up_to_date() -> None:
    assert DOC.read_text() == zoo_markdown(), "run: python scripts/model_zoo.py"
