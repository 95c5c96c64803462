"""Unit tests of the wire coding: raw tensors, JSON data, binary split, generate shapes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llmserve.core.errors import InvalidArgument, Unsupported
from llmserve.core.types import InferenceResponse, Tensor
from llmserve.frontends.http_generate import _fit_shape, tensor_value
from llmserve.frontends.tensors import classify, parse_version, tensor_from_raw, tensor_to_raw
from llmserve.frontends.wire import (
    OutputPolicy,
    decode_infer_request,
    encode_infer_response,
    tensor_from_json,
)


@pytest.mark.parametrize("dtype,api", [(np.int16, "INT16"), (np.uint32, "UINT32"),
                                       (np.float32, "FP32"), (np.bool_, "BOOL")])
def test_raw_roundtrip(dtype, api):
    arr = np.arange(6).astype(dtype).reshape(2, 3)
    t = tensor_from_raw("x", api, [2, 3], tensor_to_raw(Tensor("x", api, arr)))
    assert t.data.dtype == dtype and t.data.flags.writeable
    np.testing.assert_array_equal(t.data, arr)


def test_bf16_rounds_to_nearest_even():
    t = Tensor("x", "BF16", np.array([1.0, 1.00390625, 1.01171875], dtype=np.float32))
    raw = tensor_to_raw(t)
    back = tensor_from_raw("x", "BF16", [3], raw).data
    assert back.tolist() == [1.0, 1.0, 1.015625]


def test_json_data_checks():
    assert tensor_from_json("x", "FP32", [2], [1, 2.5]).data.dtype == np.float32
    assert tensor_from_json("x", "UINT64", [1], [2**64 - 1]).data.tolist() == [2**64 - 1]
    for dt, data in (("UINT8", [-1]), ("INT32", [1.5]), ("BOOL", [1]), ("INT64", [2**64])):
        with pytest.raises(InvalidArgument):
            tensor_from_json("x", dt, [1], data)
    assert tensor_from_json("x", "INT32", [0], []).data.shape == (0,)


def test_decode_request_and_policy():
    header = json.dumps({
        "id": "7", "parameters": {"binary_data_output": True, "sequence_id": "s"},
        "inputs": [{"name": "A", "datatype": "INT32", "shape": [2],
                    "parameters": {"binary_data_size": 8}},
                   {"name": "B", "datatype": "BYTES", "shape": [1], "data": ["q"]}],
        "outputs": [{"name": "O1"}, {"name": "O2", "parameters": {"binary_data": False}}],
    }).encode()
    body = header + np.array([3, 4], "<i4").tobytes()
    req, policy = decode_infer_request(body, str(len(header)), "m", 2)
    assert req.id == "7" and req.model_version == 2 and req.correlation_id == "s"
    assert req.parameters == {}
    assert req.inputs["A"].data.tolist() == [3, 4] and req.inputs["B"].data.tolist() == [b"q"]
    assert policy.wants_binary("O1") and not policy.wants_binary("O2")
    with pytest.raises(Unsupported):
        decode_infer_request(json.dumps({"inputs": [{"name": "A", "datatype": "INT32",
                             "shape": [1], "parameters": {"shared_memory_region": "r"}}]}).encode(),
                             None, "m", -1)
    with pytest.raises(InvalidArgument, match="more than once"):
        one = {"name": "A", "datatype": "INT32", "shape": [1], "data": [1]}
        decode_infer_request(json.dumps({"inputs": [one, one]}).encode(), None, "m", -1)


def test_encode_response_mixed():
    resp = InferenceResponse("m", 1, "i", [Tensor("A", "INT32", np.array([1, 2], np.int32)),
                                           Tensor("B", "BYTES", np.array([b"x"], np.object_))])
    body, headers = encode_infer_response(resp, OutputPolicy(binary_default=False))
    assert headers == {"content-type": "application/json"}
    assert json.loads(body)["outputs"][1]["data"] == ["x"]
    policy = OutputPolicy(binary_default=True)
    body, headers = encode_infer_response(resp, policy)
    n = int(headers["inference-header-content-length"])
    assert body[n:] == np.array([1, 2], "<i4").tobytes() + b"\x01\0\0\0x"


def test_classify_batched():
    t = Tensor("o", "FP32", np.array([[0.1, 0.9, 0.5], [3, 1, 2]], np.float32))
    out = classify(t, 2, batched=True)
    assert out.data.tolist() == [[b"0.900000:1", b"0.500000:2"], [b"3.000000:0", b"2.000000:2"]]


def test_fit_shape_and_values():
    assert _fit_shape("x", [1], 1) == [1]
    assert _fit_shape("x", [-1], 3) == [3]
    assert _fit_shape("x", [2, -1], 6) == [2, 3]
    assert _fit_shape("x", [], 1) == []
    with pytest.raises(InvalidArgument):
        _fit_shape("x", [2], 3)
    with pytest.raises(InvalidArgument):
        _fit_shape("x", [2, -1], 3)
    assert tensor_value(Tensor("x", "FP16", np.array([[1.5]], np.float16))) == 1.5
    # more than one element: a flat list, as Triton writes it
    assert tensor_value(Tensor("x", "BYTES", np.array([[b"a", b"b"]], np.object_))) == ["a", "b"]
    assert tensor_value(Tensor("x", "INT32", np.array([[[1, 2], [3, 4]]], np.int32))) == [1, 2, 3, 4]


def test_parse_version():
    assert parse_version("") == -1 and parse_version("3") == 3
    for bad in ("x", "-1", "1.5"):
        with pytest.raises(InvalidArgument):
            parse_version(bad)


def test_grpc_typed_contents():
    from tritonclient.grpc import service_pb2 as pb

    from llmserve.frontends.grpc_wire import decode_request, encode_response

    req = pb.ModelInferRequest(model_name="m", model_version="2", id="q")
    t = req.inputs.add(name="F", datatype="FP32", shape=[2])
    t.contents.fp32_contents.extend([1.5, -2.0])
    t = req.inputs.add(name="B", datatype="BOOL", shape=[1, 2])
    t.contents.bool_contents.extend([True, False])
    t = req.inputs.add(name="U", datatype="UINT8", shape=[1])
    t.contents.uint_contents.extend([300])
    req.parameters["sequence_id"].string_param = "seq"
    req.parameters["triton_enable_empty_final_response"].bool_param = True
    with pytest.raises(InvalidArgument, match="out of range"):
        decode_request(req)
    del req.inputs[2]
    ireq = decode_request(req)
    assert ireq.inputs["F"].data.dtype == np.float32 and ireq.inputs["F"].data.tolist() == [1.5, -2]
    assert ireq.inputs["B"].data.tolist() == [[True, False]]
    assert ireq.model_version == 2 and ireq.correlation_id == "seq" and ireq.parameters == {}
    resp = InferenceResponse("m", 2, "q", [Tensor("F", "FP32", ireq.inputs["F"].data)],
                             parameters={"big": 2**64 - 1, "s": "x"}, final=False)
    msg = encode_response(resp, final=False)
    assert msg.parameters["big"].uint64_param == 2**64 - 1
    assert msg.parameters["triton_final_response"].bool_param is False
    assert msg.raw_output_contents[0] == np.array([1.5, -2], "<f4").tobytes()
