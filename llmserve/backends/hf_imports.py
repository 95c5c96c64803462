"""Resolves transformers' lazily imported names once, in one thread.

transformers' lazy module is not thread-safe: two models loading in parallel that both
do `from transformers import AutoTokenizer` can see ImportError. Resolving the common
names once under a lock, before any model code runs, removes the race.
"""

from __future__ import annotations

import importlib.util
import threading

_lock = threading.Lock()
_done = False
_NAMES = (
    "AutoConfig",
    "AutoTokenizer",
    "PreTrainedTokenizerFast",
    "PreTrainedTokenizer",
    "AutoModelForCausalLM",
    "LlamaTokenizer",
    "T5Tokenizer",
)


def prewarm_transformers() -> None:
    global _done
    if _done:
        return
    with _lock:
        if _done:
            return
        if importlib.util.find_spec("transformers") is not None:
            import transformers

            for name in _NAMES:
                try:
                    getattr(transformers, name)
                except (ImportError, AttributeError):
                    pass  # optional extras (e.g. sentencepiece) may be absent
        _done = True
