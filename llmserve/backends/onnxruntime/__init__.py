"""The onnxruntime backend (ONNX models on ONNX Runtime): sessions, config checks, batched
execution. ONNX Runtime is optional at run time; without it the registry reports the model
UNAVAILABLE."""

from llmserve.backends.onnxruntime.backend import OnnxInstance, OnnxModel, load_model

__all__ = ["OnnxInstance", "OnnxModel", "load_model"]
