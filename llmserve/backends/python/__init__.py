"""The Python backend: runs Triton Python models (model.py, TritonPythonModel) via pb_utils,
each instance in a stub process of its own (Triton's way) or on a thread of the server."""

from __future__ import annotations

from typing import Any

__all__ = ["load_model"]


def load_model(spec: Any) -> Any:
    # imported here: a stub process imports this package without the server's modules
    from llmserve.backends.python.backend import load_model as load

    return load(spec)
