"""The config's errors: a bad key or argument (exit 2), and a missing file or folder, each naming its key."""

from __future__ import annotations


class ConfigError(ValueError):
    """A malformed config or argument; `key` names the offending key (exit code 2)."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


class NotFound(ConfigError, FileNotFoundError):
    """A ConfigError about a file or folder that is not there; still a FileNotFoundError to whoever catches one."""


def _short(value) -> str:
    """repr(value), cut in the middle when long (a 400-digit number), so a message stays one readable line."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:28]}...{text[-12:]} ({len(text)} characters)"

