"""triton_python_backend_utils (pb_utils): the public face Python models import.

A thin module over the backend's internals (tensor.py, request.py, response.py, bls.py,
metrics.py, errors.py) plus the helper functions, constants, Logger and model control.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from llmserve.backends.python import context
from llmserve.backends.python.errors import TritonError, TritonModelException
from llmserve.backends.python.metrics import Metric, MetricFamily
from llmserve.backends.python.model_config import ModelConfig
from llmserve.backends.python.request import (
    TRITONSERVER_MEMORY_CPU,
    TRITONSERVER_MEMORY_GPU,
    TRITONSERVER_REQUEST_RELEASE_ALL,
    TRITONSERVER_REQUEST_RELEASE_RESCHEDULE,
    InferenceRequest,
    PreferredMemory,
)
from llmserve.backends.python.response import (
    TRITONSERVER_RESPONSE_COMPLETE_FINAL,
    InferenceResponse,
    InferenceResponseSender,
)
from llmserve.backends.python.tensor import (
    Tensor,
    deserialize_bytes_tensor,
    numpy_to_triton_type,
    serialize_byte_tensor,
    triton_string_to_numpy,
    triton_to_numpy_type,
)

TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2

__all__ = [
    "InferenceRequest", "InferenceResponse", "InferenceResponseSender", "Logger", "Metric",
    "MetricFamily", "ModelConfig", "PreferredMemory", "Tensor", "TritonError",
    "TritonModelException", "TRITONSERVER_MEMORY_CPU", "TRITONSERVER_MEMORY_GPU",
    "TRITONSERVER_REQUEST_FLAG_SEQUENCE_END", "TRITONSERVER_REQUEST_FLAG_SEQUENCE_START",
    "TRITONSERVER_REQUEST_RELEASE_ALL", "TRITONSERVER_REQUEST_RELEASE_RESCHEDULE",
    "TRITONSERVER_RESPONSE_COMPLETE_FINAL", "deserialize_bytes_tensor",
    "get_input_config_by_name", "get_input_tensor_by_name", "get_output_config_by_name",
    "get_output_tensor_by_name", "is_model_ready", "load_model", "numpy_to_triton_type",
    "serialize_byte_tensor", "triton_string_to_numpy", "triton_to_numpy_type", "unload_model",
    "using_decoupled_model_transaction_policy",
]


def get_input_tensor_by_name(inference_request: InferenceRequest, name: str) -> Tensor | None:
    for t in inference_request.inputs():
        if t.name() == name:
            return t
    return None


def get_output_tensor_by_name(inference_response: InferenceResponse, name: str) -> Tensor | None:
    for t in inference_response.output_tensors():
        if t.name() == name:
            return t
    return None


def get_input_config_by_name(model_config: dict, name: str) -> dict | None:
    for item in model_config.get("input", []):
        if item.get("name") == name:
            return item
    return None


def get_output_config_by_name(model_config: dict, name: str) -> dict | None:
    for item in model_config.get("output", []):
        if item.get("name") == name:
            return item
    return None


def using_decoupled_model_transaction_policy(model_config: dict) -> bool:
    return bool(model_config.get("model_transaction_policy", {}).get("decoupled", False))


# -- model control (the server's repository API, from inside a model) ---------------------
def _run_on_server(what: str, make_coro) -> Any:
    server = context.server_or_raise(what)
    loop = server.loop
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        raise TritonModelException(f"{what} cannot be called from the server's event loop")
    try:
        return asyncio.run_coroutine_threadsafe(make_coro(server), loop).result()
    except TritonModelException:
        raise
    except Exception as exc:
        raise TritonModelException(str(exc)) from exc


def load_model(model_name: str, config: str = "", files: dict[str, bytes] | None = None) -> None:
    """Load (or reload) a model; `config` a JSON override, `files` "file:<path>" -> bytes."""
    _run_on_server("load_model", lambda s: s.load_model(model_name, config or None, files))


def unload_model(model_name: str, unload_dependents: bool = False) -> None:
    _run_on_server("unload_model", lambda s: s.unload_model(model_name, unload_dependents))


def is_model_ready(model_name: str, model_version: str = "") -> bool:
    server = context.server_or_raise("is_model_ready")
    return bool(server.model_ready(model_name, str(model_version)))


# -- logging ------------------------------------------------------------------------------
_model_log = logging.getLogger("llmserve.python_model")


class Logger:
    """Model logging into the server's log (pb_utils.Logger.log_info(...), ...)."""

    INFO, WARNING, ERROR, VERBOSE = 0, 1, 2, 3
    _LEVELS = {0: logging.INFO, 1: logging.WARNING, 2: logging.ERROR, 3: logging.DEBUG}

    @staticmethod
    def log(message: str, level: int = 0) -> None:
        _model_log.log(Logger._LEVELS.get(level, logging.INFO), "%s", message)

    @staticmethod
    def log_info(message: str) -> None:
        _model_log.info("%s", message)

    @staticmethod
    def log_warn(message: str) -> None:
        _model_log.warning("%s", message)

    @staticmethod
    def log_error(message: str) -> None:
        _model_log.error("%s", message)

    @staticmethod
    def log_verbose(message: str) -> None:
        _model_log.debug("%s", message)


class LogLevel:
    INFO, WARNING, ERROR, VERBOSE = Logger.INFO, Logger.WARNING, Logger.ERROR, Logger.VERBOSE
