"""KServe v2 HTTP body <-> InferenceRequest / InferenceResponse: JSON tensors and the
binary tensor extension (Inference-Header-Content-Length, binary_data_size, binary_data)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmserve.core.datatypes import from_api_name
from llmserve.core.errors import InvalidArgument, Unsupported
from llmserve.core.types import InferenceRequest, InferenceResponse, RequestedOutput, Tensor
from llmserve.frontends.tensors import (
    apply_parameters,
    check_shape,
    classify,
    element_count,
    tensor_from_raw,
    tensor_to_raw,
)

HEADER_LENGTH = "inference-header-content-length"

# numpy kinds accepted in JSON 'data' per datatype family
_INT_KINDS = frozenset("iu")
_FLOAT_KINDS = frozenset("iuf")


@dataclass(slots=True)
class OutputPolicy:
    """How the client wants outputs back: binary or JSON, classification per output."""

    binary_default: bool = False
    requested: dict[str, RequestedOutput] = field(default_factory=dict)

    def wants_binary(self, name: str) -> bool:
        req = self.requested.get(name)
        if req is not None and "binary_data" in req.parameters:
            return req.binary_data
        return self.binary_default


# A JSON escape of a UTF-16 surrogate; only bodies holding one are walked for lone ones.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def parse_json(raw: bytes | memoryview, what: str = "request") -> Any:
    """A JSON body, or InvalidArgument: malformed, nested too deep, or holding a string
    that is not valid Unicode (a lone surrogate such as "\\ud800", which JSON allows but
    UTF-8 cannot carry, so it would fail later wherever the text is encoded)."""
    data = bytes(raw)
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise InvalidArgument(f"failed to parse the {what} JSON: {exc}") from None
    if _SURROGATE_ESCAPE.search(data):
        where = _lone_surrogate_at(doc)
        if where is not None:
            raise InvalidArgument(
                f"failed to parse the {what} JSON: the string at {where} is not valid "
                "Unicode (it holds a lone UTF-16 surrogate)"
            )
    return doc


def _lone_surrogate_at(doc: Any) -> str | None:
    """JSON path of the first key or string that UTF-8 cannot encode, else None."""
    stack: list[tuple[str, Any]] = [("$", doc)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return path
        elif isinstance(value, dict):
            for key, item in value.items():
                try:
                    key.encode("utf-8")
                except UnicodeEncodeError:
                    return f"{path} (a key)"
                stack.append((f"{path}.{key}", item))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", item) for i, item in enumerate(value))
    return None


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """Split a body into the JSON part and the binary part per Inference-Header-Content-Length."""
    if header_length is None:
        return body, memoryview(b"")
    try:
        n = int(header_length)
    except ValueError:
        raise InvalidArgument(f"invalid Inference-Header-Content-Length '{header_length}'") from None
    if n < 0 or n > len(body):
        raise InvalidArgument(
            f"Inference-Header-Content-Length {n} is outside the body of {len(body)} bytes"
        )
    view = memoryview(body)
    return bytes(view[:n]), view[n:]


def decode_infer_request(
    body: bytes, header_length: str | None, model_name: str, model_version: int
) -> tuple[InferenceRequest, OutputPolicy]:
    json_part, binary = split_body(body, header_length)
    doc = parse_json(json_part)
    if not isinstance(doc, dict):
        raise InvalidArgument("inference request must be a JSON object")
    request = InferenceRequest(model_name=model_name, inputs={}, model_version=model_version)
    rid = doc.get("id", "")
    if not isinstance(rid, str):
        raise InvalidArgument("request 'id' must be a string")
    request.id = rid
    params = doc.get("parameters", {})
    if not isinstance(params, dict):
        raise InvalidArgument("request 'parameters' must be a JSON object")
    apply_parameters(request, params)
    policy = OutputPolicy(binary_default=params.get("binary_data_output") is True)

    inputs = doc.get("inputs")
    if not isinstance(inputs, list):
        raise InvalidArgument("inference request must have an 'inputs' array")
    offset = 0
    for item in inputs:
        tensor, used = _decode_input(item, binary[offset:])
        if tensor.name in request.inputs:
            raise InvalidArgument(f"input '{tensor.name}' is given more than once")
        request.inputs[tensor.name] = tensor
        offset += used
    if offset != len(binary):
        raise InvalidArgument(
            f"unexpected additional binary data: {len(binary) - offset} bytes not used by any input"
        )

    outputs = doc.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list):
            raise InvalidArgument("request 'outputs' must be an array")
        request.requested_outputs = []
        for item in outputs:
            req = _decode_requested_output(item)
            policy.requested[req.name] = req
            request.requested_outputs.append(req)
    return request, policy


def _decode_input(item: Any, binary: memoryview) -> tuple[Tensor, int]:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise InvalidArgument("each input must be a JSON object with a string 'name'")
    name = item["name"]
    datatype = item.get("datatype")
    if not isinstance(datatype, str):
        raise InvalidArgument(f"input '{name}' must have a string 'datatype'")
    from_api_name(datatype)
    if "shape" not in item:
        raise InvalidArgument(f"input '{name}' must have a 'shape'")
    shape = check_shape(name, item["shape"])
    params = item.get("parameters", {})
    if not isinstance(params, dict):
        raise InvalidArgument(f"'parameters' of input '{name}' must be a JSON object")
    if "shared_memory_region" in params:
        raise Unsupported("shared memory inputs are not supported by this server")
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidArgument(f"'binary_data_size' of input '{name}' must be a non-negative integer")
        if size > len(binary):
            raise InvalidArgument(
                f"input '{name}' wants {size} bytes of binary data but only {len(binary)} remain"
            )
        return tensor_from_raw(name, datatype, shape, binary[:size]), size
    if "data" not in item:
        raise InvalidArgument(f"input '{name}' has neither 'data' nor 'binary_data_size'")
    return tensor_from_json(name, datatype, shape, item["data"]), 0


def tensor_from_json(name: str, datatype: str, shape: list[int], data: Any) -> Tensor:
    """JSON 'data' (flat or nested, row-major) to a Tensor of the given shape."""
    dt = from_api_name(datatype)
    flat = _flatten(data, name)
    if len(flat) != element_count(shape):
        raise InvalidArgument(
            f"unable to parse 'data' of input '{name}': {len(flat)} elements do not match shape "
            f"{shape}"
        )
    if dt.api_name == "BYTES":
        out = np.empty(len(flat), dtype=np.object_)
        for i, value in enumerate(flat):
            if not isinstance(value, str):
                raise InvalidArgument(f"input '{name}' of type BYTES expects strings in 'data'")
            out[i] = value.encode("utf-8")
        return Tensor(name, "BYTES", out.reshape(shape))
    probe = np.asarray(flat) if flat else np.zeros(0, dtype=np.int64)
    kind = probe.dtype.kind
    if kind in "fO" and all(isinstance(v, int) and not isinstance(v, bool) for v in flat):
        kind = "i"  # integers beyond int64 (UINT64 range): numpy keeps them as objects
    if dt.api_name == "BOOL":
        ok = kind == "b" or not flat
    elif dt.api_name in ("FP16", "FP32", "FP64", "BF16"):
        ok = kind in _FLOAT_KINDS
    else:
        ok = kind in _INT_KINDS
    if not ok:
        raise InvalidArgument(
            f"unable to parse 'data' of input '{name}': values are not of type {dt.api_name}"
        )
    target = np.float32 if dt.api_name == "BF16" else dt.numpy
    try:
        if kind in _INT_KINDS and dt.numpy is not None and dt.numpy.kind in "iu":
            info = np.iinfo(dt.numpy)
            if flat and (min(flat) < info.min or max(flat) > info.max):
                raise OverflowError
            arr = np.array(flat, dtype=target).reshape(shape)
        else:
            arr = probe.astype(target).reshape(shape)
    except (OverflowError, ValueError, TypeError):
        raise InvalidArgument(f"value out of range for {dt.api_name} input '{name}'") from None
    return Tensor(name, dt.api_name, arr)


def _flatten(data: Any, name: str) -> list:
    if not isinstance(data, list):
        return [data]
    if not any(isinstance(x, list) for x in data):
        return data
    out: list = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            out.append(value)
        else:
            stack.pop()
    return out


def _decode_requested_output(item: Any) -> RequestedOutput:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise InvalidArgument("each requested output must be a JSON object with a string 'name'")
    params = item.get("parameters", {})
    if not isinstance(params, dict):
        raise InvalidArgument(f"'parameters' of output '{item['name']}' must be a JSON object")
    if "shared_memory_region" in params:
        raise Unsupported("shared memory outputs are not supported by this server")
    binary = params.get("binary_data", False)
    if not isinstance(binary, bool):
        raise InvalidArgument(f"'binary_data' of output '{item['name']}' must be a boolean")
    k = params.get("classification", 0)
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise InvalidArgument(f"'classification' of output '{item['name']}' must be >= 0")
    return RequestedOutput(item["name"], binary_data=binary, classification=k, parameters=params)


def json_data(tensor: Tensor) -> list:
    """Flat row-major JSON list of a tensor's values (BYTES decoded as UTF-8)."""
    flat = np.asarray(tensor.data).reshape(-1)
    if tensor.datatype == "BYTES":
        return [_text(v) for v in flat]
    if tensor.datatype in ("FP16", "BF16"):
        return flat.astype(np.float32).tolist()
    return flat.tolist()


def _text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def apply_classification(
    response: InferenceResponse,
    requested: list[RequestedOutput] | None,
    batched: bool,
    labels_of: Callable[[str], list[str] | None] | None = None,
) -> None:
    wanted = {r.name: r.classification for r in requested or [] if r.classification > 0}
    if wanted:
        response.outputs = [
            classify(t, wanted[t.name], batched, labels_of(t.name) if labels_of else None)
            if t.name in wanted
            else t
            for t in response.outputs
        ]


def encode_infer_response(
    response: InferenceResponse, policy: OutputPolicy
) -> tuple[bytes, dict[str, str]]:
    """Response body and headers; binary outputs follow the JSON part."""
    doc: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": str(response.model_version),
    }
    if response.id:
        doc["id"] = response.id
    if response.parameters:
        doc["parameters"] = response.parameters
    outputs = []
    chunks: list[bytes] = []
    for tensor in response.outputs:
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": tensor.shape,
        }
        if policy.wants_binary(tensor.name):
            raw = tensor_to_raw(tensor)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = json_data(tensor)
        outputs.append(entry)
    doc["outputs"] = outputs
    header = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    if not chunks:
        return header, {"content-type": "application/json"}
    headers = {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }
    return b"".join([header, *chunks]), headers
