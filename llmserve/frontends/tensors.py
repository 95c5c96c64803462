"""Tensor coding shared by HTTP and gRPC: raw little-endian bytes <-> Tensor, the
classification extension, request parameters with reserved names, version strings."""

from __future__ import annotations

from typing import Any

import numpy as np

from llmserve.core.datatypes import (
    bf16_to_float32,
    deserialize_bytes_tensor,
    float32_to_bf16_bytes,
    from_api_name,
    serialize_bytes_tensor,
)
from llmserve.core.errors import InvalidArgument, Unsupported
from llmserve.core.types import InferenceRequest, Tensor

# Request parameters the protocol consumes itself instead of passing to the model.
RESERVED_PARAMETERS = frozenset(
    {
        "sequence_id",
        "sequence_start",
        "sequence_end",
        "priority",
        "timeout",
        "binary_data_output",
        "triton_enable_empty_final_response",
    }
)
SEQUENCE_START = 1
SEQUENCE_END = 2


def parse_version(version: str) -> int:
    """URL / proto version string to InferenceRequest.model_version ("" -> -1)."""
    if version in ("", None):
        return -1
    try:
        value = int(version)
    except ValueError:
        raise InvalidArgument(f"failed to parse model version '{version}'") from None
    if value < 0:
        raise InvalidArgument(f"invalid model version '{version}'")
    return value


def check_shape(name: str, shape: Any) -> list[int]:
    if not isinstance(shape, (list, tuple)) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in shape
    ):
        raise InvalidArgument(f"shape of input '{name}' must be a list of integers")
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"shape of input '{name}' has a negative dimension: {list(shape)}")
    return [int(d) for d in shape]


def element_count(shape: list[int]) -> int:
    count = 1
    for d in shape:
        count *= d
    return count


def tensor_from_raw(name: str, datatype: str, shape: list[int], raw: bytes | memoryview) -> Tensor:
    """Decode a tensor sent as raw bytes (binary extension / gRPC raw contents)."""
    dt = from_api_name(datatype)
    shape = check_shape(name, shape)
    count = element_count(shape)
    if dt.api_name == "BYTES":
        data = deserialize_bytes_tensor(raw)
        if data.size != count:
            raise InvalidArgument(
                f"unexpected number of string elements {data.size} for input '{name}', "
                f"expecting {count} for shape {shape}"
            )
        return Tensor(name, "BYTES", data.reshape(shape))
    expected = count * dt.itemsize
    if len(raw) != expected:
        raise InvalidArgument(
            f"unexpected total byte size {len(raw)} for input '{name}', expecting {expected}"
        )
    if dt.api_name == "BF16":
        return Tensor(name, "BF16", bf16_to_float32(bytes(raw), tuple(shape)))
    data = np.frombuffer(raw, dtype=dt.numpy.newbyteorder("<")).astype(dt.numpy).reshape(shape)
    return Tensor(name, dt.api_name, data)


def tensor_to_raw(tensor: Tensor) -> bytes:
    """Raw little-endian bytes of a tensor (BYTES length-prefixed, BF16 rounded)."""
    dt = from_api_name(tensor.datatype)
    if dt.api_name == "BYTES":
        return serialize_bytes_tensor(tensor.data)
    if dt.api_name == "BF16":
        return float32_to_bf16_bytes(tensor.data)
    return np.ascontiguousarray(tensor.data, dtype=dt.numpy.newbyteorder("<")).tobytes()


def classify(tensor: Tensor, k: int, batched: bool, labels: list[str] | None = None) -> Tensor:
    """Classification extension: top-k "value:index[:label]" strings per batch entry; the
    label comes from the output's label_filename, as Triton does."""
    if tensor.datatype in ("BYTES",):
        raise InvalidArgument(f"classification is not supported for BYTES output '{tensor.name}'")
    data = np.asarray(tensor.data)
    rows = data.reshape(data.shape[0], -1) if batched and data.ndim > 0 else data.reshape(1, -1)
    k = min(k, rows.shape[1])
    out = np.empty((rows.shape[0], k), dtype=np.object_)
    is_float = data.dtype.kind == "f"
    for r, row in enumerate(rows):
        order = np.argsort(-row.astype(np.float64), kind="stable")[:k]
        for j, idx in enumerate(order):
            value = f"{float(row[idx]):f}" if is_float else str(int(row[idx]))
            text = f"{value}:{int(idx)}"
            if labels is not None and int(idx) < len(labels):
                text += f":{labels[int(idx)]}"
            out[r, j] = text.encode()
    if not batched:
        out = out.reshape(k)
    return Tensor(tensor.name, "BYTES", out)


def apply_parameters(request: InferenceRequest, params: dict[str, Any]) -> None:
    """Set sequence/priority/timeout from reserved parameters; the rest go to the model."""
    for key, value in params.items():
        if key == "sequence_id":
            request.correlation_id = _sequence_id(value)
        elif key == "sequence_start":
            if _flag(key, value):
                request.flags |= SEQUENCE_START
        elif key == "sequence_end":
            if _flag(key, value):
                request.flags |= SEQUENCE_END
        elif key == "priority":
            request.priority = _unsigned(key, value)
        elif key == "timeout":
            request.timeout_us = _unsigned(key, value)
        elif key not in RESERVED_PARAMETERS:
            if not isinstance(value, (bool, int, float, str)):
                raise InvalidArgument(
                    f"parameter '{key}' must be a string, number or boolean, "
                    f"got {type(value).__name__}"
                )
            request.parameters[key] = value


def _sequence_id(value: Any) -> int | str:
    """An unsigned 64-bit or string correlation id (Triton caps strings at 128 chars)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidArgument("parameter 'sequence_id' must be an integer or a string")
    if isinstance(value, int) and not 0 <= value < 2**64:
        raise InvalidArgument("parameter 'sequence_id' must be an unsigned 64-bit integer")
    if isinstance(value, str) and len(value) > 128:
        raise Unsupported("string correlation ID cannot be longer than 128 characters")
    return value


def _flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(f"parameter '{key}' must be a boolean")
    return value


def _unsigned(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(f"parameter '{key}' must be a non-negative integer")
    return value
