"""The config's errors: a bad key or argument (exit 2), and a missing file or folder, each naming its key."""

from __future__ import annotations


class ConfigError(ValueError):
    """A malformed config or argument; `key` names the offending key (exit code 2)."""

    def __init__(self, key: str, message: str):
        if len(message) > MESSAGE_LIMIT:  # a value quoted whole (a 10 MB string) must not become a 10 MB line
            message = f"{message[:MESSAGE_LIMIT - 300]} ... ({len(message)} characters) ... {message[-200:]}"
        shown = key if len(key) <= 100 else f"{key[:60]}... ({len(key)} characters)"  # `--set <100 KB>.x=1`
        super().__init__(f"{shown}: {message}")
        self.key = key


class NotFound(ConfigError, FileNotFoundError):
    """A ConfigError about a file or folder that is not there; still a FileNotFoundError to whoever catches one."""


# the longest message a ConfigError carries; _short keeps each quoted value to QUOTE_LIMIT characters (its head and
# tail), so a message quoting two values and the allowed choices stays well under it
MESSAGE_LIMIT = 1000
QUOTE_LIMIT = 200


def _short(value, limit: int = QUOTE_LIMIT) -> str:
    """repr(value), cut in the middle when longer than `limit` characters (a 400-digit number, a 10 MB string), so
    a message stays one readable line: the head, "...", the tail and the full length."""
    try:
        text = repr(value)
    except RecursionError:  # a list nested 3000 deep
        return f"<{type(value).__name__} nested too deep to print>"
    if len(text) <= limit:
        return text
    return f"{text[:limit - 40]}...{text[-20:]} ({len(text)} characters)"

