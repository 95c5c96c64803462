"""Checks a request against a model's config (names, datatypes, shapes, batch size) and
applies `reshape` on the way in (client dims -> model dims) and on the way out.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from llmserve.core import datatypes
from llmserve.core.errors import InvalidArgument
from llmserve.core.types import InferenceRequest, Tensor


def dtype_api_name(data_type: int) -> str:
    return datatypes.config_to_api(mc.DataType.Name(data_type))


def _shape_matches(actual: list[int], expected: list[int]) -> bool:
    return len(actual) == len(expected) and all(e == -1 or a == e for a, e in zip(actual, expected, strict=False))


def _fmt(shape: list[int]) -> str:
    return "[" + ",".join(str(int(d)) for d in shape) + "]"


def reshape_to(data: np.ndarray, lead: list[int], src_dims: list[int], dst_dims: list[int]) -> np.ndarray:
    """Reshape the non-batch part of `data` from src_dims to dst_dims (-1 = variable).

    Variable dims are carried over in order, as Triton does; one remaining -1 is
    resolved by numpy.
    """
    actual = list(data.shape[len(lead):])
    variable = [a for a, s in zip(actual, src_dims, strict=False) if s == -1]
    target: list[int] = []
    for d in dst_dims:
        if d == -1:
            target.append(variable.pop(0) if variable else -1)
        else:
            target.append(int(d))
    if target.count(-1) > 1:
        raise InvalidArgument(f"cannot reshape tensor of shape {_fmt(list(data.shape))} to {_fmt(lead + list(dst_dims))}")
    try:
        return data.reshape(lead + target)
    except ValueError:
        raise InvalidArgument(
            f"cannot reshape tensor of shape {_fmt(list(data.shape))} to {_fmt(lead + target)}"
        ) from None


def validate_request(config: mc.ModelConfig, request: InferenceRequest) -> tuple[dict[str, Tensor], int]:
    """Validated (and reshaped) inputs plus the request's batch size."""
    name = config.name
    declared = {i.name: i for i in config.input}
    given = request.inputs
    for input_name in given:
        if input_name not in declared:
            raise InvalidArgument(f"unexpected inference input '{input_name}' for model '{name}'")
    missing = [n for n, i in declared.items() if not i.optional and n not in given]
    if missing:
        raise InvalidArgument(
            f"expected {len([i for i in declared.values() if not i.optional])} inputs but got "
            f"{len(given)} inputs for model '{name}'. Got input(s) {sorted(given)}, but missing "
            f"required input(s) {missing}. Please provide all required input(s)."
        )
    batching = config.max_batch_size > 0
    batch_size = 1
    seen_batch: int | None = None
    out: dict[str, Tensor] = {}
    for input_name, tensor in given.items():
        cfg = declared[input_name]
        expected_type = dtype_api_name(cfg.data_type)
        if tensor.datatype != expected_type:
            raise InvalidArgument(
                f"inference input '{input_name}' data-type is '{tensor.datatype}', but model "
                f"'{name}' expects '{expected_type}'"
            )
        shape = list(tensor.data.shape)
        dims = [int(d) for d in cfg.dims]
        lead: list[int] = []
        if batching:
            if not shape:
                raise InvalidArgument(
                    f"inference input '{input_name}' of model '{name}' must have a batch dimension"
                )
            lead = [shape[0]]
            if seen_batch is not None and shape[0] != seen_batch:
                raise InvalidArgument(
                    f"inference input '{input_name}' batch size {shape[0]} does not match the "
                    f"batch size {seen_batch} of the other inputs for model '{name}'"
                )
            seen_batch = shape[0]
            if shape[0] < 1 or shape[0] > config.max_batch_size:
                raise InvalidArgument(
                    f"inference request batch-size must be <= {config.max_batch_size} for '{name}'"
                )
        check_shape = shape[len(lead):]
        if not (cfg.allow_ragged_batch and batching) and not _shape_matches(check_shape, dims):
            expected = ([-1] if batching else []) + dims
            raise InvalidArgument(
                f"unexpected shape for input '{input_name}' for model '{name}'. Expected "
                f"{_fmt(expected)}, got {_fmt(shape)}"
            )
        data = tensor.data
        if cfg.HasField("reshape"):
            data = reshape_to(data, lead, dims, [int(d) for d in cfg.reshape.shape])
        out[input_name] = Tensor(input_name, tensor.datatype, data)
    if seen_batch is not None:
        batch_size = seen_batch
    return out, batch_size


def requested_output_names(config: mc.ModelConfig, request: InferenceRequest) -> list[str]:
    declared = [o.name for o in config.output]
    if not request.requested_outputs:
        return declared
    names = []
    for ro in request.requested_outputs:
        if ro.name not in declared:
            raise InvalidArgument(f"unexpected inference output '{ro.name}' for model '{config.name}'")
        names.append(ro.name)
    return names


def output_transform(config: mc.ModelConfig, requested: list[str], explicit: bool
                     ) -> Callable[[list[Tensor]], list[Tensor]]:
    """Filter outputs to the requested ones and undo `reshape` (model dims -> client dims)."""
    reshapes = {o.name: o for o in config.output if o.HasField("reshape")}
    lead_len = 1 if config.max_batch_size > 0 else 0
    wanted = set(requested)

    def transform(outputs: list[Tensor]) -> list[Tensor]:
        result = []
        for t in outputs:
            if explicit and t.name not in wanted:
                continue
            cfg = reshapes.get(t.name)
            if cfg is not None:
                lead = list(t.data.shape[:lead_len])
                data = reshape_to(t.data, lead, [int(d) for d in cfg.reshape.shape],
                                  [int(d) for d in cfg.dims])
                t = Tensor(t.name, t.datatype, data)
            result.append(t)
        return result

    return transform
