"""pb_utils.Tensor (numpy and DLPack) and the Triton <-> numpy data type helpers."""

from __future__ import annotations

from typing import Any

import numpy as np

from llmserve.backends.python.errors import TritonModelException
from llmserve.core import datatypes
from llmserve.core.types import Tensor as CoreTensor

# TRITONSERVER_DataType values, as pb_utils' helpers use them
TYPE_INVALID, TYPE_BOOL, TYPE_UINT8, TYPE_UINT16, TYPE_UINT32, TYPE_UINT64 = 0, 1, 2, 3, 4, 5
TYPE_INT8, TYPE_INT16, TYPE_INT32, TYPE_INT64, TYPE_FP16 = 6, 7, 8, 9, 10
TYPE_FP32, TYPE_FP64, TYPE_BYTES, TYPE_BF16 = 11, 12, 13, 14

_API_TO_CODE = {
    "BOOL": TYPE_BOOL, "UINT8": TYPE_UINT8, "UINT16": TYPE_UINT16, "UINT32": TYPE_UINT32,
    "UINT64": TYPE_UINT64, "INT8": TYPE_INT8, "INT16": TYPE_INT16, "INT32": TYPE_INT32,
    "INT64": TYPE_INT64, "FP16": TYPE_FP16, "FP32": TYPE_FP32, "FP64": TYPE_FP64,
    "BYTES": TYPE_BYTES, "BF16": TYPE_BF16,
}
_CODE_TO_API = {v: k for k, v in _API_TO_CODE.items()}


def triton_to_numpy_type(data_type: int) -> Any:
    api = _CODE_TO_API.get(int(data_type))
    if api is None or api == "BF16":
        return None
    return datatypes.BY_API[api].numpy.type


def numpy_to_triton_type(data_type: Any) -> int | None:
    try:
        return _API_TO_CODE[datatypes.api_name_of_numpy(np.dtype(data_type))]
    except Exception:
        return None


def triton_string_to_numpy(triton_type_string: str) -> Any:
    dt = datatypes.BY_CONFIG.get(triton_type_string)
    if dt is None or dt.numpy is None:
        return None
    return dt.numpy.type


def serialize_byte_tensor(input_tensor: np.ndarray) -> np.ndarray | tuple:
    """Triton's BYTES layout (4-byte length + bytes per element) as a 0-d object array,
    by llmserve's one codec; an empty tensor gives (), as pb_utils' does."""
    if input_tensor.size == 0:
        return ()
    if input_tensor.dtype != np.object_ and input_tensor.dtype.type != np.bytes_:
        raise TritonModelException("cannot serialize bytes tensor: invalid datatype")
    out = np.empty((), dtype=np.object_)
    out[()] = datatypes.serialize_bytes_tensor(input_tensor)
    return out


def deserialize_bytes_tensor(encoded_tensor: Any) -> np.ndarray:
    """pb_utils' inverse of serialize_byte_tensor: the bytes (or a 0-d array holding
    them) to a 1-D object array of bytes."""
    if isinstance(encoded_tensor, np.ndarray):
        encoded_tensor = encoded_tensor.item()
    return datatypes.deserialize_bytes_tensor(encoded_tensor)


def _as_bytes_array(array: np.ndarray) -> np.ndarray:
    out = np.empty(array.shape, dtype=np.object_)
    out.reshape(-1)[:] = [datatypes.as_bytes(x) for x in array.reshape(-1).tolist()]
    return out


class Tensor:
    """A named tensor. BYTES tensors are numpy object arrays of bytes."""

    def __init__(self, name: str, tensor: Any, *, _datatype: str | None = None,
                 _device_tensor: Any = None):
        if not isinstance(name, str):
            raise TritonModelException("Tensor name must be a string")
        self._name = name
        self._device_tensor = _device_tensor  # a torch tensor not on the CPU
        if _datatype == "BF16":
            self._array = np.asarray(tensor, dtype=np.float32)
            self._datatype = "BF16"
            return
        array = np.asarray(tensor)
        if array.dtype.kind in ("S", "U"):
            array = _as_bytes_array(array)
        try:
            self._datatype = _datatype or datatypes.api_name_of_numpy(array.dtype)
        except Exception as exc:
            raise TritonModelException(f"unsupported numpy dtype {array.dtype} for tensor '{name}'") from exc
        self._array = array

    def name(self) -> str:
        return self._name

    def triton_dtype(self) -> int:
        return _API_TO_CODE[self._datatype]

    def datatype(self) -> str:
        return self._datatype

    def shape(self) -> list[int]:
        return list(self._array.shape)

    def is_cpu(self) -> bool:
        return self._device_tensor is None

    def as_numpy(self) -> np.ndarray:
        if self._device_tensor is not None:
            raise TritonModelException("Tensor is stored in GPU and cannot be converted to NumPy.")
        if self._datatype == "BF16":
            raise TritonModelException("Tensor dtype used is not supported by NumPy (BF16).")
        return self._array

    def to_dlpack(self) -> Any:
        if self._device_tensor is not None:
            return self._device_tensor.__dlpack__()
        if self._datatype == "BF16":
            import torch

            return torch.from_numpy(self._array).to(torch.bfloat16).__dlpack__()
        if self._datatype == "BYTES":
            raise TritonModelException("DLPack does not support BYTES tensors")
        return np.ascontiguousarray(self._array).__dlpack__()

    @staticmethod
    def from_dlpack(name: str, capsule: Any) -> Tensor:
        try:
            import torch
        except ImportError:  # plain numpy producers only
            return Tensor(name, np.from_dlpack(capsule))
        t = torch.utils.dlpack.from_dlpack(capsule)
        if t.device.type != "cpu":
            host = t.detach().to("cpu")
            dtype = "BF16" if t.dtype == torch.bfloat16 else None
            data = host.float().numpy() if dtype else host.numpy()
            return Tensor(name, data, _datatype=dtype, _device_tensor=t)
        if t.dtype == torch.bfloat16:
            return Tensor(name, t.float().numpy(), _datatype="BF16")
        return Tensor(name, t.numpy())

    # -- server side ------------------------------------------------------------------
    def _to_core(self) -> CoreTensor:
        return CoreTensor(self._name, self._datatype, self._array)

    @classmethod
    def _from_core(cls, t: CoreTensor) -> Tensor:
        return cls(t.name, t.data, _datatype=t.datatype)

    def __repr__(self) -> str:
        return f"Tensor(name={self._name!r}, datatype={self._datatype}, shape={self.shape()})"
