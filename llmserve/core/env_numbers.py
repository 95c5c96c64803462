"""Numbers read from environment variables: one reading, one error message."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

N = TypeVar("N", int, float)


def env_number(name: str, parse: Callable[[str], N], ok: Callable[[N], bool],
               what: str) -> N | None:
    """The number in environment variable `name`, None when it is unset or blank.
    ValueError naming the variable (and saying it must be `what`) when `parse` refuses
    the value or `ok` rejects the number."""
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        number = parse(value)
    except ValueError:
        number = None
    if number is None or not ok(number):
        raise ValueError(f"{name} must be {what}, got '{value}'")
    return number
