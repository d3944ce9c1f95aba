"""Plumbing shared by the command-line tools: config discovery and one-line error reporting."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import hydra
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from cdkd.config import config_dir
from cdkd.errors import CdkdError, brief

T = TypeVar("T")


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


def config_error_message(exc: BaseException) -> str:
    """One line for an error of Hydra or OmegaConf: unknown key, missing option, bad syntax.

    The first line of the message, then its OmegaConf cause, then Hydra's hint, e.g.
    ``Could not override 'distill.lamda': Key 'lamda' is not in struct. To append to your
    config use +distill.lamda=0.1``.
    """
    if isinstance(exc, MissingConfigException) and exc.options:
        return f"{brief(exc)} (available: {', '.join(exc.options)})"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    text = lines[0]
    if isinstance(exc.__cause__, OmegaConfBaseException):
        text = f"{text.rstrip('.')}: {brief(exc.__cause__)}"
    return ". ".join([text.rstrip("."), *lines[1:]])


def command(config_name: str) -> Callable[[Callable[[DictConfig], T]], Callable[[], T | None]]:
    """Make a Hydra task a command-line tool that reports every user error as one line.

    ``report_errors`` covers the task; errors of composing the configuration (an unknown
    override key, a missing config option, bad override syntax), which Hydra raises before
    the task runs, are caught around ``hydra.main``. ``debug=true``, ``CDKD_DEBUG=1`` or
    ``HYDRA_FULL_ERROR=1`` keep Hydra's own report. The tool's ``__wrapped__`` is the task
    as reported (for calling it with a composed config).
    """

    def decorate(task: Callable[[DictConfig], T]) -> Callable[[], T | None]:
        reported = report_errors(task)
        # Hydra's decorator is typed loosely; the app returns what the task returns.
        run: Callable[[], T | None] = hydra.main(
            version_base="1.3", config_path=config_dir(), config_name=config_name
        )(reported)

        @functools.wraps(reported)
        def main() -> T | None:
            if debug_enabled() or os.environ.get("HYDRA_FULL_ERROR"):
                return run()
            os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises instead of printing a report
            try:
                return run()
            except (HydraException, OmegaConfBaseException) as exc:
                print(f"error: {config_error_message(exc)}", file=sys.stderr)
                sys.exit(1)
            finally:
                del os.environ["HYDRA_FULL_ERROR"]

        return main

    return decorate
