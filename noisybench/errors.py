"""Errors a user can fix. The CLI prints their message as one line and exits non-zero."""


class NoisybenchError(Exception):
    """Base class: the message must say what is wrong and how to fix it, in one line."""


class ConfigError(NoisybenchError, ValueError):
    """A config value is out of range or inconsistent."""


class DataError(NoisybenchError):
    """A dataset file is missing, corrupt, or cannot be obtained."""


def one_line(msg) -> str:
    """A message as one line (what the CLI prints after `noisybench: error:` and records write)."""
    return " ".join(str(msg).replace("\t", " ").split())
