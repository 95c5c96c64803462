"""Backends: the interface (base.py), lookup by name (registry.py) and the implementations."""

from llmserve.backends.base import BackendInstance, BackendModel, InstanceSpec, ModelSpec
from llmserve.backends.registry import load_backend_model

__all__ = ["BackendInstance", "BackendModel", "InstanceSpec", "ModelSpec", "load_backend_model"]
