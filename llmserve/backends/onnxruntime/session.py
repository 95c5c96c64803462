"""ONNX Runtime session settings from a model config, as Triton's onnxruntime backend reads
them: execution providers by instance kind, SessionOptions from `parameters` and
optimization.graph.level, run options. Settings it cannot honour are logged at load.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import onnxruntime as ort
from tritonclient.grpc import model_config_pb2 as mc

from llmserve.core.booleans import bool_word
from llmserve.core.errors import InvalidArgument

log = logging.getLogger(__name__)

_LEVELS = ort.GraphOptimizationLevel
# optimization { graph { level } }: Triton's mapping (0, the default, enables everything).
GRAPH_LEVELS = {
    -1: _LEVELS.ORT_ENABLE_BASIC,
    0: _LEVELS.ORT_ENABLE_ALL,
    1: _LEVELS.ORT_ENABLE_EXTENDED,
    2: getattr(_LEVELS, "ORT_ENABLE_LAYOUT", _LEVELS.ORT_ENABLE_ALL),
}
# CUDA execution provider options Triton takes from `parameters`.
_CUDA_OPTIONS = {
    "cudnn_conv_algo_search": {"0": "EXHAUSTIVE", "1": "HEURISTIC", "2": "DEFAULT"},
    "arena_extend_strategy": {"0": "kNextPowerOfTwo", "1": "kSameAsRequested"},
    "gpu_mem_limit": None,
    "do_copy_in_default_stream": None,
    "cudnn_conv_use_max_workspace": None,
    "use_ep_level_unified_stream": None,
}
_SESSION_INTS = {"intra_op_thread_count": "intra_op_num_threads",
                 "inter_op_thread_count": "inter_op_num_threads"}
_SESSION_BOOLS = {"enable_mem_arena": "enable_cpu_mem_arena",
                  "enable_mem_pattern": "enable_mem_pattern"}
_RUN_ENTRIES = {"memory.enable_memory_arena_shrinkage"}


@dataclass(slots=True)
class SessionSettings:
    options: Any  # ort.SessionOptions
    providers: list[Any]
    run_options: Any  # ort.RunOptions
    device: str = "cpu"
    cuda_options: dict[str, str] = field(default_factory=dict)


def _parse_bool(model: str, key: str, value: str) -> bool:
    parsed = bool_word(value)
    if parsed is None:
        raise InvalidArgument(f"unable to load model '{model}': parameter '{key}' expects a "
                              f"boolean, got '{value}'")
    return parsed


def _parse_int(model: str, key: str, value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise InvalidArgument(f"unable to load model '{model}': parameter '{key}' expects an "
                              f"integer, got '{value}'") from None


def graph_level(config: mc.ModelConfig) -> Any:
    """The graph optimization level from optimization.graph.level (unknown -> ALL)."""
    level = int(config.optimization.graph.level)
    if level not in GRAPH_LEVELS:
        log.warning("model '%s': optimization.graph.level %d is not known to the onnxruntime "
                    "backend; using all graph optimizations", config.name, level)
        return _LEVELS.ORT_ENABLE_ALL
    return GRAPH_LEVELS[level]


def _warn_unsupported_optimization(config: mc.ModelConfig) -> None:
    accel = config.optimization.execution_accelerators
    for kind, items in (("gpu", accel.gpu_execution_accelerator),
                        ("cpu", accel.cpu_execution_accelerator)):
        for item in items:
            log.warning("model '%s': %s execution accelerator '%s' is accepted but not "
                        "applied (llmserve runs ONNX models on ONNX Runtime's CPU or CUDA "
                        "execution provider)", config.name, kind, item.name)
    if config.optimization.cuda.graphs:
        log.warning("model '%s': optimization.cuda.graphs is accepted but not applied by the "
                    "onnxruntime backend", config.name)


def session_settings(config: mc.ModelConfig, kind: str, device_id: int) -> SessionSettings:
    """SessionOptions, providers and RunOptions for one instance of `config`."""
    name = config.name
    options = ort.SessionOptions()
    options.graph_optimization_level = graph_level(config)
    run_options = ort.RunOptions()
    cuda: dict[str, str] = {}
    for key, param in sorted(config.parameters.items()):
        value = param.string_value
        if key in _SESSION_INTS:
            setattr(options, _SESSION_INTS[key], max(_parse_int(name, key, value), 0))
        elif key in _SESSION_BOOLS:
            setattr(options, _SESSION_BOOLS[key], _parse_bool(name, key, value))
        elif key == "execution_mode":
            mode = _parse_int(name, key, value)
            options.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if mode == 1
                                      else ort.ExecutionMode.ORT_SEQUENTIAL)
        elif key in _RUN_ENTRIES:
            run_options.add_run_config_entry(key, value)
        elif key.startswith("session."):
            options.add_session_config_entry(key, value)
        elif key in _CUDA_OPTIONS:
            table = _CUDA_OPTIONS[key]
            cuda[key] = table.get(value.strip(), value.strip()) if table else value.strip()
        else:
            log.warning("model '%s': parameter '%s' is not used by the onnxruntime backend",
                        name, key)
    _warn_unsupported_optimization(config)
    providers: list[Any] = ["CPUExecutionProvider"]
    device = "cpu"
    if kind == "KIND_GPU":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers = [("CUDAExecutionProvider", {"device_id": str(device_id), **cuda}),
                         "CPUExecutionProvider"]
            device = f"cuda:{device_id}"
        else:
            log.warning("model '%s': KIND_GPU instance on GPU %d, but this onnxruntime build "
                        "has no CUDAExecutionProvider (install onnxruntime-gpu); running on "
                        "CPU", name, device_id)
    if cuda and device == "cpu":
        log.warning("model '%s': CUDA parameters %s have no effect on a CPU instance", name,
                    sorted(cuda))
    return SessionSettings(options, providers, run_options, device, cuda)
