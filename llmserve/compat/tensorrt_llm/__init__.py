"""llmserve's stand-in for the `tensorrt_llm` package, served as `tensorrt_llm` to a
Python model that imports it when the real package is not installed. It holds the parts
that Triton's TensorRT-LLM model files use: bindings.executor, logger, llmapi.tokenizer."""

from llmserve.compat.tensorrt_llm import bindings, llmapi, logger

__all__ = ["bindings", "llmapi", "logger"]
