"""Checks a request against a model's config (names, datatypes, shapes, batch size) and
applies `reshape` on the way in (client dims -> model dims) and on the way out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class _InputSpec:
    api: str
    dims: list[int]
    optional: bool
    ragged: bool
    reshape: list[int] | None


@dataclass(frozen=True, slots=True)
class _Schema:
    """What validation reads of a config, as plain Python: reading protobuf repeated
    fields on every request cost more than the checks (ensemble steps validate per token)."""

    inputs: dict[str, _InputSpec]
    outputs: list[str]
    output_reshapes: dict[str, tuple[list[int], list[int]]]  # name -> (dims, reshape)


_SCHEMAS: dict[int, tuple[mc.ModelConfig, _Schema]] = {}


def _schema(config: mc.ModelConfig) -> _Schema:
    """The config's _Schema, per config object (a loaded model's config is not changed in
    place: a new config means a new ModelVersion)."""
    hit = _SCHEMAS.get(id(config))
    if hit is not None and hit[0] is config:
        return hit[1]
    inputs = {
        i.name: _InputSpec(dtype_api_name(i.data_type), [int(d) for d in i.dims], i.optional,
                           i.allow_ragged_batch,
                           [int(d) for d in i.reshape.shape] if i.HasField("reshape") else None)
        for i in config.input
    }
    reshapes = {o.name: ([int(d) for d in o.dims], [int(d) for d in o.reshape.shape])
                for o in config.output if o.HasField("reshape")}
    schema = _Schema(inputs, [o.name for o in config.output], reshapes)
    if len(_SCHEMAS) > 256:  # configs of unloaded models
        _SCHEMAS.clear()
    _SCHEMAS[id(config)] = (config, schema)
    return schema


def validate_request(config: mc.ModelConfig, request: InferenceRequest) -> tuple[dict[str, Tensor], int]:
    """Validated (and reshaped) inputs plus the request's batch size."""
    name = config.name
    declared = _schema(config).inputs
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
    max_batch = config.max_batch_size
    batching = max_batch > 0
    batch_size = 1
    seen_batch: int | None = None
    out: dict[str, Tensor] = {}
    for input_name, tensor in given.items():
        cfg = declared[input_name]
        expected_type = cfg.api
        if tensor.datatype != expected_type:
            raise InvalidArgument(
                f"inference input '{input_name}' data-type is '{tensor.datatype}', but model "
                f"'{name}' expects '{expected_type}'"
            )
        shape = list(tensor.data.shape)
        dims = cfg.dims
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
            if shape[0] < 1 or shape[0] > max_batch:
                raise InvalidArgument(
                    f"inference request batch-size must be <= {max_batch} for '{name}'"
                )
        check_shape = shape[len(lead):]
        if not (cfg.ragged and batching) and not _shape_matches(check_shape, dims):
            expected = ([-1] if batching else []) + dims
            raise InvalidArgument(
                f"unexpected shape for input '{input_name}' for model '{name}'. Expected "
                f"{_fmt(expected)}, got {_fmt(shape)}"
            )
        data = tensor.data
        if cfg.reshape is not None:
            data = reshape_to(data, lead, dims, cfg.reshape)
        out[input_name] = Tensor(input_name, tensor.datatype, data)
    if seen_batch is not None:
        batch_size = seen_batch
    return out, batch_size


def requested_output_names(config: mc.ModelConfig, request: InferenceRequest) -> list[str]:
    declared = _schema(config).outputs
    if not request.requested_outputs:
        return list(declared)
    names = []
    for ro in request.requested_outputs:
        if ro.name not in declared:
            raise InvalidArgument(f"unexpected inference output '{ro.name}' for model '{config.name}'")
        names.append(ro.name)
    return names


def output_transform(config: mc.ModelConfig, requested: list[str], explicit: bool
                     ) -> Callable[[list[Tensor]], list[Tensor]]:
    """Filter outputs to the requested ones and undo `reshape` (model dims -> client dims)."""
    reshapes = _schema(config).output_reshapes
    lead_len = 1 if config.max_batch_size > 0 else 0
    wanted = set(requested)

    def transform(outputs: list[Tensor]) -> list[Tensor]:
        result = []
        for t in outputs:
            if explicit and t.name not in wanted:
                continue
            cfg = reshapes.get(t.name)
            if cfg is not None:
                dims, reshape = cfg
                lead = list(t.data.shape[:lead_len])
                data = reshape_to(t.data, lead, reshape, dims)
                t = Tensor(t.name, t.datatype, data)
            result.append(t)
        return result

    return transform
