"""Exceptions that the command-line tools report as one clear line (no traceback)."""


class CdkdError(Exception):
    """A user-facing error: bad data, bad configuration or an unusable checkpoint."""


class DataError(CdkdError):
    """A dataset file or folder that cannot be used; the message names the file."""


class ConfigError(CdkdError):
    """A configuration value that is missing, out of range or inconsistent."""


class CheckpointError(CdkdError):
    """A checkpoint that is missing, truncated or made for another model or setup."""
