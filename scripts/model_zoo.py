"""Regenerate docs/models.md, the model-zoo table, from the registry and the model configs."""

from pathlib import Path

from cdkd.analysis.zoo import zoo_markdown
from cdkd.files import write_text_atomic

if __name__ == "__main__":
    target = Path(__file__).resolve().parents[1] / "docs" / "models.md"
    write_text_atomic(target, zoo_markdown())
    print(f"wrote {target}")
