"""How config tensors map onto a TorchScript forward(), per the seed's rules for the
PyTorch backend: forward argument names, `<name>__<index>`, else config order; a single
Dict(str, Tensor) argument takes inputs by name; the data type table (no BYTES; FP16 and
BF16 included).
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import Any

import torch
from tritonclient.grpc import model_config_pb2 as mc

from llmserve.core.errors import InternalError, InvalidArgument
from llmserve.scheduling.sequence_controls import sequence_input_types, state_output_types

log = logging.getLogger(__name__)

# The seed's data type table, PyTorch column, plus FP16 (Triton's PyTorch backend maps it
# to kHalf) and BF16 (torch.bfloat16; an llmserve addition: Triton's backend refuses it).
TORCH_TYPES: dict[str, torch.dtype] = {
    "TYPE_BOOL": torch.bool,
    "TYPE_UINT8": torch.uint8,
    "TYPE_INT8": torch.int8,
    "TYPE_INT16": torch.int16,
    "TYPE_INT32": torch.int32,
    "TYPE_INT64": torch.int64,
    "TYPE_FP16": torch.float16,
    "TYPE_FP32": torch.float32,
    "TYPE_FP64": torch.float64,
    "TYPE_BF16": torch.bfloat16,
}
CONFIG_TYPE_OF = {v: k for k, v in TORCH_TYPES.items()}
DELIMITER = "__"


class Naming(str, enum.Enum):
    FORWARD_ARGUMENT = "FORWARD_ARGUMENT"
    NAMED_INDEX = "NAMED_INDEX"
    STRICT_CONFIG_ORDERING = "STRICT_CONFIG_ORDERING"
    DICT = "DICT"


@dataclass(slots=True)
class IOMapping:
    """Position of each config input among forward()'s arguments (dict key when
    input_naming is DICT) and of each config output among the returned tensors."""

    input_naming: Naming
    input_index: dict[str, int]
    num_inputs: int
    output_naming: Naming
    output_index: dict[str, int]


def _named_index(name: str) -> int | None:
    """Triton's <name>__<index>: the text after the first '__' must be all digits."""
    pos = name.find(DELIMITER)
    if pos < 0:
        return None
    rest = name[pos + len(DELIMITER):]
    return int(rest) if rest.isdigit() else None


def _naming(names: list[str], forward_args: list[str] | None, kind: str, model: str) -> Naming:
    if forward_args is not None and all(n in forward_args for n in names):
        return Naming.FORWARD_ARGUMENT
    if all(_named_index(n) is not None for n in names):
        return Naming.NAMED_INDEX
    # only worth a warning when the order matters
    level = logging.WARNING if len(names) > 1 else logging.DEBUG
    log.log(level, "model '%s': %s names %s are neither forward() argument names nor of the "
            "form <name>__<index>; using the order of the model configuration", model, kind,
            names)
    return Naming.STRICT_CONFIG_ORDERING


def forward_arguments(module: Any) -> list[Any]:
    """forward()'s schema arguments without `self`."""
    args = list(module.forward.schema.arguments)
    if args and isinstance(args[0].type, torch.ClassType):
        args = args[1:]
    return args


def _is_tensor_type(arg_type: Any) -> bool:
    if isinstance(arg_type, torch.OptionalType):
        arg_type = arg_type.getElementType()
    return isinstance(arg_type, torch.TensorType)


def _check_types(config: mc.ModelConfig) -> None:
    typed = [("input", t.name, mc.DataType.Name(t.data_type)) for t in config.input]
    typed += [("output", t.name, mc.DataType.Name(t.data_type)) for t in config.output]
    typed += [("sequence input", n, t) for n, t in sequence_input_types(config).items()]
    typed += [("state output", n, t) for n, t in state_output_types(config).items()]
    for kind, tensor_name, type_name in typed:
        if type_name not in TORCH_TYPES:
            raise InvalidArgument(f"unable to load model '{config.name}': unsupported "
                                  f"datatype {type_name} for {kind} '{tensor_name}' (the "
                                  f"PyTorch backend supports {', '.join(TORCH_TYPES)})")


def _indices(names: list[str], naming: Naming, forward_args: list[str] | None) -> dict[str, int]:
    if naming == Naming.FORWARD_ARGUMENT:
        assert forward_args is not None
        return {n: forward_args.index(n) for n in names}
    if naming == Naming.NAMED_INDEX:
        return {n: int(_named_index(n)) for n in names}  # type: ignore[arg-type]
    return {n: i for i, n in enumerate(names)}


def _check_indices(config: mc.ModelConfig, kind: str, index: dict[str, int],
                   limit: int | None) -> None:
    seen: dict[int, str] = {}
    for name, i in index.items():
        if limit is not None and i >= limit:
            raise InvalidArgument(f"unable to load model '{config.name}': {kind} '{name}' has "
                                  f"index {i}, but the model's forward() takes {limit} inputs")
        if i in seen:
            raise InvalidArgument(f"unable to load model '{config.name}': {kind}s '{seen[i]}' "
                                  f"and '{name}' both map to index {i}")
        seen[i] = name


def map_io(config: mc.ModelConfig, module: Any) -> IOMapping:
    """Validate `config` against the TorchScript module's forward() and map its tensors
    (Triton's ValidateInputs / ValidateOutputs). Raises InvalidArgument."""
    _check_types(config)
    args = forward_arguments(module)
    # the sequence batcher's control and implicit-state inputs are forward() arguments too
    input_names = [t.name for t in config.input] + list(sequence_input_types(config))
    if len(args) == 1 and isinstance(args[0].type, torch.DictType):
        input_naming, input_index, num_inputs = Naming.DICT, {}, len(input_names)
    else:
        for arg in args:
            if isinstance(arg.type, torch.DictType):
                raise InvalidArgument(
                    f"unable to load model '{config.name}': Multiple inputs of kind DictType "
                    "were detected. Only a single input of type Dict(str, Tensor) is supported.")
            if not _is_tensor_type(arg.type):
                raise InvalidArgument(
                    f"unable to load model '{config.name}': An input of type '{arg.type}' "
                    f"(argument '{arg.name}') was detected in the model. Only a single input "
                    "of type Dict(str, Tensor) or input(s) of type Tensor are supported.")
        if len(args) != len(input_names):
            raise InvalidArgument(f"unable to load model '{config.name}', configuration expects "
                                  f"{len(input_names)} inputs, model provides {len(args)}")
        arg_names = [a.name for a in args]
        input_naming = _naming(input_names, arg_names, "input", config.name)
        input_index = _indices(input_names, input_naming, arg_names)
        num_inputs = len(args)
        _check_indices(config, "input", input_index, num_inputs)
    output_names = [t.name for t in config.output]
    output_names += [n for n in state_output_types(config) if n not in output_names]
    output_naming = _naming(output_names, None, "output", config.name)
    output_index = _indices(output_names, output_naming, None)
    _check_indices(config, "output", output_index, None)
    return IOMapping(input_naming, input_index, num_inputs, output_naming, output_index)


def flatten_outputs(result: Any, model: str) -> list[torch.Tensor]:
    """forward()'s return value as a list of tensors: a Tensor, or a tuple/list of them."""
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in result):
        return list(result)
    raise InternalError(f"model '{model}' returned {type(result).__name__}; the PyTorch "
                          "backend takes a Tensor or a tuple/list of Tensors as output")
