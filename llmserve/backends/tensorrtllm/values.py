"""How the model set reads config.pbtxt parameter values: a `${...}` placeholder left by
fill_template counts as unset; booleans as tensorrtllm_backend spells them. Imports
nothing heavy: the model set's Python models use it inside their stub processes."""

from __future__ import annotations

import re

from llmserve.core.booleans import bool_word
from llmserve.core.errors import InvalidArgument

_PLACEHOLDER = re.compile(r"^\$\{?\w*\}?$")


def is_unset(value: str | None) -> bool:
    return value is None or value.strip() == "" or bool(_PLACEHOLDER.match(value.strip()))


def parse_bool(name: str, value: str) -> bool:
    parsed = bool_word(value)
    if parsed is None:
        raise InvalidArgument(f"parameter '{name}': expected true or false, got '{value}'")
    return parsed
