"""Backend-side auto-complete for ONNX models, as Triton's onnxruntime backend does it: read
the model's tensors with ONNX Runtime, then fill max_batch_size (default-max-batch-size when
every tensor has a dynamic first dimension), dynamic batching, and missing inputs/outputs.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from llmserve.config.complete import apply_default_max_batch_size
from llmserve.config.errors import ConfigError
from llmserve.options import ServerOptions

log = logging.getLogger(__name__)

BACKEND = "onnxruntime"

# ONNX Runtime type strings -> config data types (the seed's data type table; BF16 has no
# ONNX Runtime entry there).
ORT_TYPES = {
    "tensor(bool)": "TYPE_BOOL",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(uint16)": "TYPE_UINT16",
    "tensor(uint32)": "TYPE_UINT32",
    "tensor(uint64)": "TYPE_UINT64",
    "tensor(int8)": "TYPE_INT8",
    "tensor(int16)": "TYPE_INT16",
    "tensor(int32)": "TYPE_INT32",
    "tensor(int64)": "TYPE_INT64",
    "tensor(float16)": "TYPE_FP16",
    "tensor(float)": "TYPE_FP32",
    "tensor(double)": "TYPE_FP64",
    "tensor(string)": "TYPE_STRING",
}


@dataclass(frozen=True, slots=True)
class OnnxTensorInfo:
    """One input or output as the ONNX model declares it."""

    name: str
    onnx_type: str  # "tensor(float)", "seq(tensor(float))", ...
    shape: tuple[int, ...]  # -1 for symbolic or unknown dimensions

    @property
    def data_type(self) -> str | None:
        """The config data type name (TYPE_FP32, ...), None when Triton has none for it."""
        return ORT_TYPES.get(self.onnx_type)


def tensor_infos(nodes: Any) -> list[OnnxTensorInfo]:
    """OnnxTensorInfo for each onnxruntime NodeArg (session.get_inputs() / get_outputs())."""
    infos = []
    for node in nodes:
        shape = node.shape if isinstance(node.shape, (list, tuple)) else []
        dims = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)
        infos.append(OnnxTensorInfo(node.name, str(node.type), dims))
    return infos


def read_model_io(model_file: Path) -> tuple[list[OnnxTensorInfo], list[OnnxTensorInfo]]:
    """The model's inputs and outputs, read with an ONNX Runtime CPU session (graph
    optimizations off: only the metadata is needed). Raises ConfigError naming the file."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(model_file), sess_options=options,
                                       providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own pybind exception types
        raise ConfigError(f"{model_file}: unable to auto-complete the configuration: ONNX "
                          f"Runtime cannot load the model: {e}") from None
    return tensor_infos(session.get_inputs()), tensor_infos(session.get_outputs())


def default_max_batch_size(options: ServerOptions, backend: str = BACKEND) -> int:
    """--backend-config [onnxruntime,]default-max-batch-size (backend-specific first), 4."""
    value = options.backend_config.get(backend, {}).get("default-max-batch-size")
    if value is None:
        value = options.backend_config.get("", {}).get("default-max-batch-size", "4")
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"--backend-config default-max-batch-size must be an integer, got "
                          f"'{value}'") from None


def needs_auto_complete(config: mc.ModelConfig) -> bool:
    """Triton skips ONNX auto-complete when the config names both inputs and outputs."""
    return len(config.input) == 0 or len(config.output) == 0


def onnxruntime_installed() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def run_onnx_auto_complete(config: mc.ModelConfig, model_file: Path,
                           default_batch: int) -> None:
    """Complete `config` in place from the ONNX model file (a no-op when the config already
    names inputs and outputs). Raises ConfigError for a model it cannot read or a
    max_batch_size the model cannot honour."""
    if not needs_auto_complete(config):
        log.info("model '%s': skipping ONNX auto-complete, inputs and outputs already "
                 "specified", config.name)
        return
    if not onnxruntime_installed():
        log.warning("model '%s': onnxruntime is not installed, so its inputs, outputs and "
                    "max_batch_size cannot be read from %s (auto-complete not applied)",
                    config.name, model_file)
        return
    inputs, outputs = read_model_io(Path(model_file))
    _complete_max_batch(config, inputs + outputs, default_batch, model_file)
    if len(config.input) == 0:
        for info in inputs:
            _fill_tensor(config.input.add(), info, config, model_file)
    if len(config.output) == 0:
        for info in outputs:
            _fill_tensor(config.output.add(), info, config, model_file)


def _complete_max_batch(config: mc.ModelConfig, infos: list[OnnxTensorInfo],
                        default_batch: int, model_file: Path) -> None:
    """Triton's AutoCompleteMaxBatch: batching is possible when every input and output has
    a dynamic first dimension; then an unset max_batch_size becomes default-max-batch-size
    and dynamic batching is switched on (when > 1 and no scheduler is configured)."""
    can_batch = all(len(i.shape) > 0 and i.shape[0] == -1 for i in infos)
    if can_batch:
        apply_default_max_batch_size(config, default_batch, supports_batching=True)
    elif config.max_batch_size != 0:
        raise ConfigError(f"{model_file}: autofill failed for model '{config.name}': "
                          f"configuration specified max-batch {config.max_batch_size} but "
                          "model session does not support batching")


def _fill_tensor(tensor: Any, info: OnnxTensorInfo, config: mc.ModelConfig,
                 model_file: Path) -> None:
    """Triton's AutoCompleteIO for one tensor: name, data type, dims without the batch
    dimension; a tensor left with no dims becomes dims [1] with reshape [] (Triton does
    not allow empty dims)."""
    if info.data_type is None:
        raise ConfigError(f"{model_file}: unable to auto-complete tensor '{info.name}' of "
                          f"model '{config.name}': ONNX type {info.onnx_type} has no Triton "
                          "data type")
    tensor.name = info.name
    tensor.data_type = mc.DataType.Value(info.data_type)
    dims = list(info.shape[1:] if config.max_batch_size > 0 else info.shape)
    if dims:
        tensor.dims.extend(dims)
    else:
        tensor.dims.append(1)
        tensor.reshape.SetInParent()
