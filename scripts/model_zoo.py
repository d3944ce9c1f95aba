"""Regenerate docs/models.md, the model-zoo table, from the registry and the model configs.

``--check`` writes nothing and exits 1 when the page and the code disagree (``make docs``
runs it before building the site).
"""

import argparse
import sys
from pathlib import Path

from cdkd.analysis.zoo import zoo_markdown
from cdkd.files import write_text_atomic

TARGET = Path(__file__).resolve().parents[1] / "docs" / "models.md"

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args()
    page = zoo_markdown()
    if args.check:
        if TARGET.read_text(encoding="utf-8") != page:
            sys.exit(f"{TARGET}: out of date with the registry; run python scripts/model_zoo.py")
        print(f"{TARGET}: up to date")
    else:
        write_text_atomic(TARGET, page)
        print(f"wrote {TARGET}")
