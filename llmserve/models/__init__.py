"""Model registry and lifecycle: versions with their instances, states, statistics."""

from llmserve.models.manager import ModelManager
from llmserve.models.version import ModelState, ModelVersion

__all__ = ["ModelManager", "ModelState", "ModelVersion"]
