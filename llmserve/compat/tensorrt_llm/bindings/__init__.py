"""tensorrt_llm.bindings: the executor API (the C++ bindings' Python face)."""

from llmserve.compat.tensorrt_llm.bindings import executor

__all__ = ["executor"]
