"""Plumbing shared by the command-line tools: config discovery and one-line error reporting."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from cdkd.errors import CdkdError

T = TypeVar("T")


def config_dir() -> str:
    """Absolute path of the Hydra config tree: ``conf/`` of a checkout, or the packaged copy."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[1] / "conf", here.parents[3] / "conf"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise RuntimeError("cdkd configuration folder not found (expected conf/train.yaml)")


def debug_enabled() -> bool:
    """Whether full tracebacks were asked for (``debug=true`` or ``CDKD_DEBUG=1``)."""
    return os.environ.get("CDKD_DEBUG", "") not in ("", "0") or any(
        arg in ("debug=true", "debug=True", "+debug=true") for arg in sys.argv[1:]
    )


def report_errors(task: Callable[..., T]) -> Callable[..., T]:
    """Wrap a Hydra task so that user errors print as one line and exit with status 1.

    Wraps the function *inside* ``hydra.main`` (Hydra would otherwise print a traceback).
    ``debug=true`` or ``CDKD_DEBUG=1`` re-raises with the full traceback.
    """

    @functools.wraps(task)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return task(*args, **kwargs)
        except CdkdError as exc:
            if debug_enabled():
                raise
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(1)

    return wrapper
