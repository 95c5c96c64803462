"""Backends: the interface (base.py), lookup by name (registry.py) and the implementations.

Names load on first use, so a Python model's stub process can import
llmserve.backends.python's pb_utils without the server's dependencies (tritonclient).
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "BackendInstance": "llmserve.backends.base",
    "BackendModel": "llmserve.backends.base",
    "InstanceSpec": "llmserve.backends.base",
    "ModelSpec": "llmserve.backends.base",
    "load_backend_model": "llmserve.backends.registry",
}
__all__ = list(_NAMES)


def __getattr__(name: str) -> Any:
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'llmserve.backends' has no attribute '{name}'")
    return getattr(importlib.import_module(module), name)
