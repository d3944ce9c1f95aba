"""The model-zoo page is generated from the code and must match it.

Building every network takes about half a minute, so the check is ``slow`` here; ``make docs``
(part of CI) runs the same comparison (``scripts/model_zoo.py --check``) before the site.
"""

from pathlib import Path

import pytest

from cdkd.analysis.zoo import zoo_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "models.md"


@pytest.mark.slow
def test_model_zoo_page_is_up_to_date() -> None:
    assert DOC.read_text() == zoo_markdown(), "run: python scripts/model_zoo.py"
