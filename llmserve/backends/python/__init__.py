"""The Python backend: runs Triton Python models (model.py, TritonPythonModel) via pb_utils."""

from llmserve.backends.python.backend import load_model

__all__ = ["load_model"]
