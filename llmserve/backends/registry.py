"""Backend lookup by name: backend `X` lives in module `llmserve.backends.X` and exposes
`load_model(spec: ModelSpec) -> BackendModel`, so adding a backend is adding one file.
Runtimes we do not bundle fail to load with a clear UNAVAILABLE reason.
"""

from __future__ import annotations

import importlib
import importlib.util
import re

from llmserve.backends.base import BackendModel, ModelSpec
from llmserve.core.errors import Unavailable

# backend name -> (python module of its runtime, what to tell the user)
_RUNTIMES = {
    "onnxruntime": ("onnxruntime", "ONNX Runtime (pip install onnxruntime)"),
    "pytorch": ("torch", "PyTorch (LibTorch/TorchScript)"),
    "tensorflow": ("tensorflow", "TensorFlow"),
    "openvino": ("openvino", "OpenVINO"),
    "dali": ("nvidia.dali", "NVIDIA DALI"),
    "tensorrt": ("tensorrt", "TensorRT"),
}
_ALIASES = {"tensorrt_plan": "tensorrt", "libtorch": "pytorch", "onnx": "onnxruntime"}
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def _module_name(backend: str) -> str | None:
    if not _NAME_RE.match(backend) or backend in {"base", "registry"}:
        return None
    module = f"llmserve.backends.{backend}"
    return module if importlib.util.find_spec(module) is not None else None


def load_backend_model(backend: str, spec: ModelSpec) -> BackendModel:
    """Load one model version with the named backend, or raise Unavailable saying why."""
    backend = _ALIASES.get(backend, backend)
    runtime = _RUNTIMES.get(backend)
    if runtime is not None and importlib.util.find_spec(runtime[0].split(".")[0]) is None:
        raise Unavailable(
            f"unable to load model '{spec.name}': the '{backend}' backend needs {runtime[1]}, "
            f"which is not installed (python module '{runtime[0]}' not found)"
        )
    module = _module_name(backend)
    if module is None:
        raise Unavailable(
            f"unable to load model '{spec.name}': backend '{backend}' is not supported by llmserve"
        )
    return importlib.import_module(module).load_model(spec)
