"""The data type table: config names, API names, numpy dtypes, byte sizes."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmserve.core.errors import InvalidArgument

_LENGTH = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class DataType:
    config_name: str  # TYPE_FP32 (model config)
    api_name: str  # FP32 (HTTP/gRPC)
    numpy: np.dtype | None  # None for BF16 (no numpy type)
    itemsize: int  # 0 for BYTES (variable)


_TABLE = [
    DataType("TYPE_BOOL", "BOOL", np.dtype(np.bool_), 1),
    DataType("TYPE_UINT8", "UINT8", np.dtype(np.uint8), 1),
    DataType("TYPE_UINT16", "UINT16", np.dtype(np.uint16), 2),
    DataType("TYPE_UINT32", "UINT32", np.dtype(np.uint32), 4),
    DataType("TYPE_UINT64", "UINT64", np.dtype(np.uint64), 8),
    DataType("TYPE_INT8", "INT8", np.dtype(np.int8), 1),
    DataType("TYPE_INT16", "INT16", np.dtype(np.int16), 2),
    DataType("TYPE_INT32", "INT32", np.dtype(np.int32), 4),
    DataType("TYPE_INT64", "INT64", np.dtype(np.int64), 8),
    DataType("TYPE_FP16", "FP16", np.dtype(np.float16), 2),
    DataType("TYPE_FP32", "FP32", np.dtype(np.float32), 4),
    DataType("TYPE_FP64", "FP64", np.dtype(np.float64), 8),
    DataType("TYPE_STRING", "BYTES", np.dtype(np.object_), 0),
    DataType("TYPE_BF16", "BF16", None, 2),
]

BY_CONFIG = {d.config_name: d for d in _TABLE}
BY_API = {d.api_name: d for d in _TABLE}


def from_config_name(name: str) -> DataType:
    try:
        return BY_CONFIG[name]
    except KeyError:
        raise InvalidArgument(f"unknown data type '{name}'") from None


def from_api_name(name: str) -> DataType:
    try:
        return BY_API[name]
    except KeyError:
        raise InvalidArgument(f"invalid datatype '{name}'") from None


def config_to_api(name: str) -> str:
    return from_config_name(name).api_name


def api_to_config(name: str) -> str:
    return from_api_name(name).config_name


def api_name_of_numpy(dtype: np.dtype) -> str:
    """API name for a numpy dtype; object/bytes/str arrays are BYTES."""
    dtype = np.dtype(dtype)
    if dtype.kind in ("O", "S", "U"):
        return "BYTES"
    for d in _TABLE:
        if d.numpy is not None and d.numpy == dtype:
            return d.api_name
    raise InvalidArgument(f"unsupported numpy dtype {dtype}")


def as_bytes(item: Any) -> bytes:
    """One BYTES element as bytes: bytes-likes as they are, anything else as UTF-8 text."""
    if isinstance(item, bytes):
        return item
    if isinstance(item, (bytearray, memoryview, np.bytes_)):
        return bytes(item)
    return str(item).encode("utf-8")


def serialize_bytes_tensor(array: np.ndarray) -> bytes:
    """Triton's BYTES wire form: each element a 4-byte little-endian length, then its
    bytes; str elements are UTF-8. The one codec of llmserve, server and Python stubs
    alike (a stub in a model's own environment has numpy, not tritonclient)."""
    parts = []
    for item in np.asarray(array, dtype=np.object_).reshape(-1).tolist():
        item = as_bytes(item)
        parts.append(_LENGTH.pack(len(item)))
        parts.append(item)
    return b"".join(parts)


def deserialize_bytes_tensor(buf: bytes | memoryview) -> np.ndarray:
    """Inverse of serialize_bytes_tensor; returns a 1-D object array of bytes. A
    truncated buffer is the client's error."""
    view = memoryview(buf).cast("B")
    out = []
    offset, end = 0, len(view)
    while offset < end:
        if offset + 4 > end:
            raise InvalidArgument("malformed BYTES tensor: truncated length prefix")
        (n,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + n > end:
            raise InvalidArgument("malformed BYTES tensor: element runs past the end")
        out.append(bytes(view[offset:offset + n]))
        offset += n
    arr = np.empty(len(out), dtype=np.object_)
    arr[:] = out
    return arr


def bf16_to_float32(raw: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """BF16 bytes (little-endian) to float32; numpy has no bfloat16."""
    u16 = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
    return u16.view(np.float32).reshape(shape)


def float32_to_bf16_bytes(array: np.ndarray) -> bytes:
    u32 = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    rounded = (u32 + 0x7FFF + ((u32 >> 16) & 1)) >> 16  # round to nearest even
    return rounded.astype("<u2").tobytes()
