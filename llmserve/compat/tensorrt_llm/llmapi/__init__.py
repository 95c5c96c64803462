"""tensorrt_llm.llmapi: only its tokenizer helpers (the LLM API itself is not provided)."""

from llmserve.compat.tensorrt_llm.llmapi import tokenizer

__all__ = ["tokenizer"]
