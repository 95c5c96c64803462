"""The native `tensorrtllm` backend: tensorrt_llm models on llmserve's LLM executor.

The registry finds `load_model` here (backend "tensorrtllm"; serving.py). The model set's
Python models (preprocessing, postprocessing, BLS) share the helpers in `text` and
`values`, which import without the executor (and torch): those models run in stub
processes that should start fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "INEFFECTIVE_PARAMETERS": "llmserve.backends.tensorrtllm.parameters",
    "TensorRTLLMModel": "llmserve.backends.tensorrtllm.backend",
    "load_model": "llmserve.backends.tensorrtllm.serving",
    "kv_events_for": "llmserve.backends.tensorrtllm.serving",
}
__all__ = ["INEFFECTIVE_PARAMETERS", "TensorRTLLMModel", "load_model"]


def __getattr__(name: str) -> Any:
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'llmserve.backends.tensorrtllm' has no attribute '{name}'")
    return getattr(importlib.import_module(module), name)
