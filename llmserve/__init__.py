"""llmserve: a Python LLM inference server compatible with Triton model repositories."""

__version__ = "0.1.0"
