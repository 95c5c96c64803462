"""The words llmserve reads as booleans, in flags, model configuration parameters and
environment variables alike: true, 1, yes, on and false, 0, no, off, in any case, with
surrounding spaces ignored (tritonserver's own flags take true/on/1 and false/off/0).
Each caller raises its own error for anything else, in the terms of what it reads."""

from __future__ import annotations

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})


def bool_word(text: object) -> bool | None:
    """True or False for a boolean word, None for anything else."""
    value = str(text).strip().lower()
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    return None
