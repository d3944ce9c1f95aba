"""Exceptions that the command-line tools report as one clear line (no traceback)."""

import re


class CdkdError(Exception):
    """A user-facing error: bad data, bad configuration or an unusable checkpoint."""


class DataError(CdkdError):
    """A dataset file or folder that cannot be used; the message names the file."""


class ConfigError(CdkdError):
    """A configuration value that is missing, out of range or inconsistent."""


class CheckpointError(CdkdError):
    """A checkpoint that is missing, truncated or made for another model or setup."""


def brief(exc: BaseException, sentences: int | None = None) -> str:
    """The first line of a library's error text, for a one-line message.

    Terminal colour codes are dropped; ``sentences=1`` also cuts the line after its first
    sentence (torch's checkpoint errors run to long explanations). An exception without text
    is named by its type.
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    if not text:
        return type(exc).__name__
    line = text.splitlines()[0]
    return ". ".join(line.split(". ")[:sentences]) if sentences else line
