"""KServe v2 gRPC messages <-> InferenceRequest / InferenceResponse: raw and typed input
contents, request parameters, raw_output_contents, metadata and statistics messages."""

from __future__ import annotations

from typing import Any

import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import service_pb2 as pb

from llmserve.core.datatypes import from_api_name
from llmserve.core.errors import InvalidArgument, Unsupported
from llmserve.core.types import InferenceRequest, InferenceResponse, RequestedOutput, Tensor
from llmserve.frontends.tensors import (
    apply_parameters,
    check_shape,
    classify,
    element_count,
    parse_version,
    tensor_from_raw,
    tensor_to_raw,
)

# typed InferTensorContents field per API datatype (FP16/BF16 travel raw only)
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def param_value(param: Any) -> Any:
    """Value of an InferParameter / ModelRepositoryParameter oneof (None when unset)."""
    kind = param.WhichOneof("parameter_choice")
    return None if kind is None else getattr(param, kind)


def set_param(target: Any, value: Any) -> None:
    """Fill an InferParameter from a Python value."""
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        if value > 2**63 - 1:
            target.uint64_param = value
        else:
            target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = str(value)


def decode_request(req: pb.ModelInferRequest) -> InferenceRequest:
    request = InferenceRequest(
        model_name=req.model_name, inputs={}, model_version=parse_version(req.model_version)
    )
    request.id = req.id
    apply_parameters(request, {k: param_value(v) for k, v in req.parameters.items()})
    raw = req.raw_input_contents
    if raw and len(raw) != len(req.inputs):
        raise InvalidArgument(
            f"expected {len(req.inputs)} raw input contents (one per input), got {len(raw)}"
        )
    for i, tensor_pb in enumerate(req.inputs):
        if "shared_memory_region" in tensor_pb.parameters:
            raise Unsupported("shared memory inputs are not supported by this server")
        shape = check_shape(tensor_pb.name, list(tensor_pb.shape))
        if raw:
            tensor = tensor_from_raw(tensor_pb.name, tensor_pb.datatype, shape, raw[i])
        else:
            tensor = _from_contents(tensor_pb, shape)
        if tensor.name in request.inputs:
            raise InvalidArgument(f"input '{tensor.name}' is given more than once")
        request.inputs[tensor.name] = tensor
    if req.outputs:
        request.requested_outputs = []
        for out in req.outputs:
            if "shared_memory_region" in out.parameters:
                raise Unsupported("shared memory outputs are not supported by this server")
            k = 0
            if "classification" in out.parameters:
                k = param_value(out.parameters["classification"])
                if isinstance(k, bool) or not isinstance(k, int) or k < 0:
                    raise InvalidArgument(f"'classification' of output '{out.name}' must be >= 0")
            request.requested_outputs.append(RequestedOutput(out.name, classification=k))
    return request


def _from_contents(tensor_pb: Any, shape: list[int]) -> Tensor:
    name, datatype = tensor_pb.name, tensor_pb.datatype
    dt = from_api_name(datatype)
    field = _CONTENTS_FIELD.get(dt.api_name)
    if field is None:
        raise InvalidArgument(
            f"input '{name}' of type {datatype} must be sent in raw_input_contents"
        )
    values = getattr(tensor_pb.contents, field)
    count = element_count(shape)
    if len(values) != count:
        raise InvalidArgument(
            f"unexpected number of elements {len(values)} in the contents of input '{name}', "
            f"expecting {count} for shape {shape}"
        )
    if dt.api_name == "BYTES":
        data = np.empty(count, dtype=np.object_)
        data[:] = list(values)
        return Tensor(name, "BYTES", data.reshape(shape))
    data = np.array(values, dtype=np.int64 if field in ("int_contents",) else None)
    try:
        if dt.numpy.kind in "iu" and data.size:
            info = np.iinfo(dt.numpy)
            if data.min() < info.min or data.max() > info.max:
                raise OverflowError
        return Tensor(name, dt.api_name, data.astype(dt.numpy).reshape(shape))
    except OverflowError:
        raise InvalidArgument(f"value out of range for {datatype} input '{name}'") from None


def encode_response(
    response: InferenceResponse,
    requested: list[RequestedOutput] | None = None,
    batched: bool = False,
    final: bool | None = None,
    labels_of=None,
) -> pb.ModelInferResponse:
    """ModelInferResponse with raw_output_contents; `final` adds triton_final_response."""
    msg = pb.ModelInferResponse(
        model_name=response.model_name,
        model_version=str(response.model_version),
        id=response.id,
    )
    for key, value in response.parameters.items():
        set_param(msg.parameters[key], value)
    if final is not None:
        msg.parameters["triton_final_response"].bool_param = final
    classes = {r.name: r.classification for r in requested or [] if r.classification > 0}
    for tensor in response.outputs:
        if tensor.name in classes:
            labels = labels_of(response, tensor.name) if labels_of else None
            tensor = classify(tensor, classes[tensor.name], batched, labels)
        out = msg.outputs.add()
        out.name = tensor.name
        out.datatype = tensor.datatype
        out.shape.extend(tensor.shape)
        msg.raw_output_contents.append(tensor_to_raw(tensor))
    return msg


def metadata_response(meta: dict) -> pb.ModelMetadataResponse:
    msg = pb.ModelMetadataResponse(
        name=meta.get("name", ""),
        versions=[str(v) for v in meta.get("versions", [])],
        platform=meta.get("platform", ""),
    )
    for key, target in (("inputs", msg.inputs), ("outputs", msg.outputs)):
        for t in meta.get(key, []):
            target.add(name=t["name"], datatype=t["datatype"], shape=[int(d) for d in t["shape"]])
    return msg


def statistics_response(stats: dict) -> pb.ModelStatisticsResponse:
    return json_format.ParseDict(stats, pb.ModelStatisticsResponse(), ignore_unknown_fields=True)


def index_response(models: list[dict]) -> pb.RepositoryIndexResponse:
    msg = pb.RepositoryIndexResponse()
    for m in models:
        msg.models.add(
            name=m.get("name", ""),
            version=str(m.get("version", "")),
            state=m.get("state", ""),
            reason=m.get("reason", ""),
        )
    return msg
