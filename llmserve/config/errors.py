"""ConfigError: the one exception for a model configuration or repository layout problem.

Its message is a single user-facing line naming the file (and line) and the problem.
"""

from __future__ import annotations

from llmserve.core.errors import InvalidArgument


class ConfigError(InvalidArgument):
    """A bad model configuration or repository layout (INVALID_ARG)."""


def fail(message: str, anchor: str | None = None) -> ConfigError:
    """A ConfigError; `anchor` (a tensor or group name) lets the loader point at its line."""
    error = ConfigError(message)
    error.anchor = anchor
    return error
