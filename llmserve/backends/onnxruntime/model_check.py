"""Checks a model config against what the ONNX model declares, as Triton's onnxruntime
backend does at load: tensor names, data types, batch dimension and dims (INVALID_ARG).
"""

from __future__ import annotations

from tritonclient.grpc import model_config_pb2 as mc

from llmserve.config.autocomplete_onnx import OnnxTensorInfo
from llmserve.core.errors import InvalidArgument
from llmserve.scheduling.sequence_controls import sequence_input_types, state_output_types


def _fmt(shape: list[int]) -> str:
    return "[" + ",".join(str(int(d)) for d in shape) + "]"


def _check_type(config: mc.ModelConfig, kind: str, tensor: mc.ModelInput | mc.ModelOutput,
                info: OnnxTensorInfo) -> None:
    expected = mc.DataType.Name(tensor.data_type)
    if info.data_type is None:
        raise InvalidArgument(f"unable to load model '{config.name}', {kind} '{tensor.name}' "
                              f"has ONNX type {info.onnx_type}, which the onnxruntime backend "
                              "does not support")
    if info.data_type != expected:
        raise InvalidArgument(f"unable to load model '{config.name}', configuration expects "
                              f"datatype {expected} for {kind} '{tensor.name}', model provides "
                              f"{info.data_type}")


def _check_dims(config: mc.ModelConfig, tensor: mc.ModelInput | mc.ModelOutput,
                info: OnnxTensorInfo) -> None:
    """Triton's CompareDimsSupported. A model dim of -1 accepts any config dim; a fixed one
    must be matched. ONNX Runtime reports an unknown rank like a scalar (no dims), so a
    rank-0 model tensor is not checked."""
    model_shape = list(info.shape)
    if not model_shape or getattr(tensor, "allow_ragged_batch", False):
        return
    batching = config.max_batch_size > 0
    if batching and model_shape[0] != -1:
        raise InvalidArgument(
            f"unable to load model '{config.name}', model '{config.name}', tensor "
            f"'{tensor.name}': for the model to support batching the shape should have at "
            "least 1 dimension and the first dimension must be -1; but shape expected by the "
            f"model is {_fmt(model_shape)}")
    dims = [int(d) for d in (tensor.reshape.shape if tensor.HasField("reshape") else tensor.dims)]
    full = ([-1] if batching else []) + dims
    mismatch = len(full) != len(model_shape) or any(
        m != -1 and m != c for m, c in zip(model_shape, full, strict=False))
    if mismatch:
        how = ("an initial batch dimension because max_batch_size > 0 followed by the "
               "explicit tensor shape, making complete shape " if batching else "shape ")
        raise InvalidArgument(
            f"unable to load model '{config.name}', model '{config.name}', tensor "
            f"'{tensor.name}': the model expects {len(model_shape)} dimensions (shape "
            f"{_fmt(model_shape)}) but the model configuration specifies {len(full)} "
            f"dimensions ({how}{_fmt(full)})")


def check_model_io(config: mc.ModelConfig, inputs: list[OnnxTensorInfo],
                   overridable: list[OnnxTensorInfo], outputs: list[OnnxTensorInfo]) -> None:
    """Raise InvalidArgument when the config's inputs/outputs do not fit the model. Config
    inputs may name overridable initializers; every other model input must be declared;
    the config may declare a subset of the model's outputs."""
    name = config.name
    model_inputs = {i.name: i for i in inputs}
    allowed = {**{i.name: i for i in overridable}, **model_inputs}
    for tensor in config.input:
        info = allowed.get(tensor.name)
        if info is None:
            raise InvalidArgument(f"unable to load model '{name}', unexpected inference input "
                                  f"'{tensor.name}', allowed inputs are: "
                                  f"{', '.join(sorted(allowed))}")
        _check_type(config, "input", tensor, info)
        _check_dims(config, tensor, info)
    sequence_inputs = sequence_input_types(config)
    _check_sequence_tensors(config, "input", sequence_inputs, model_inputs)
    declared = {t.name for t in config.input} | set(sequence_inputs)
    missing = [n for n in model_inputs if n not in declared]
    if missing:
        raise InvalidArgument(f"unable to load model '{name}', configuration expects "
                              f"{len(config.input)} inputs, model provides {len(model_inputs)}: "
                              f"model input(s) {', '.join(missing)} are not in the configuration")
    model_outputs = {o.name: o for o in outputs}
    for tensor in config.output:
        info = model_outputs.get(tensor.name)
        if info is None:
            raise InvalidArgument(f"unable to load model '{name}', unexpected inference output "
                                  f"'{tensor.name}', allowed outputs are: "
                                  f"{', '.join(sorted(model_outputs))}")
        _check_type(config, "output", tensor, info)
        _check_dims(config, tensor, info)
    _check_sequence_tensors(config, "output", state_output_types(config), model_outputs)


def _check_sequence_tensors(config: mc.ModelConfig, kind: str, tensors: dict[str, str],
                            model_tensors: dict[str, OnnxTensorInfo]) -> None:
    """Control and implicit-state tensors the sequence batcher feeds or reads must exist in
    the model with the configured data type, as Triton's onnxruntime backend checks."""
    for tensor_name, type_name in tensors.items():
        info = model_tensors.get(tensor_name)
        if info is None:
            raise InvalidArgument(f"unable to load model '{config.name}': configuration "
                                  f"specified sequence {kind} '{tensor_name}', but model does "
                                  f"not provide that {kind}")
        if info.data_type != type_name:
            raise InvalidArgument(f"unable to load model '{config.name}', sequence {kind} "
                                  f"'{tensor_name}': the model expects data-type "
                                  f"{info.data_type} but the model configuration specifies "
                                  f"data-type {type_name}")
