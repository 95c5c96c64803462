"""The onnxruntime backend through InferenceServer: auto-completed and configured ONNX
models, dynamic batching of concurrent requests, BYTES tensors, reshape, load errors."""

import asyncio
import logging

import numpy as np
import pytest
from inproc_server import (
    assert_load_failed,
    collect,
    infer_one,
    make_request,
    running_server,
    settled_stats,
)
from onnx import TensorProto
from onnx_fixtures import add_sub, string_identity, write_onnx
from tritonclient.grpc import model_config_pb2 as mc

from llmserve.backends.onnxruntime.session import session_settings
from llmserve.config.parse import parse_config_text
from llmserve.core.errors import ErrorCode, ServerError
from llmserve.core.types import RequestedOutput

IO_FP32 = """
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
        { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
         { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] } ]
"""
BATCHED = """
platform: "onnxruntime_onnx"
max_batch_size: 8
dynamic_batching { max_queue_delay_microseconds: 300000 }
instance_group [ { kind: KIND_CPU count: 1 } ]
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
optimization { graph { level: 1 } }
""" + IO_FP32
# Triton's densenet_onnx style: no batching, client dims reshaped to the model's [1, ...]
RESHAPED = """
platform: "onnxruntime_onnx"
max_batch_size: 0
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 1, 4 ] } },
        { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 1, 4 ] } } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 1, 4 ] } } ]
"""
LOAD_ERRORS = {
    # name: (model bytes, config, expected part of the reason)
    "bad_file": (b"this is not onnx", 'platform: "onnxruntime_onnx"\nmax_batch_size: 4\n' + IO_FP32,
                 "ONNX Runtime cannot load"),
    "bad_file_no_config": (b"garbage", None, "ONNX Runtime cannot load the model"),
    "wrong_input": (None, 'max_batch_size: 4\n' + IO_FP32.replace('"INPUT1"', '"WRONG"'),
                    "unexpected inference input 'WRONG', allowed inputs are: INPUT0, INPUT1"),
    "wrong_output": (None, 'max_batch_size: 4\n' + IO_FP32.replace('"OUTPUT1"', '"OUT9"'),
                     "unexpected inference output 'OUT9'"),
    "wrong_dtype": (None, 'max_batch_size: 4\n' + IO_FP32.replace(
        'name: "INPUT0" data_type: TYPE_FP32', 'name: "INPUT0" data_type: TYPE_INT32'),
        "configuration expects datatype TYPE_INT32 for input 'INPUT0', model provides TYPE_FP32"),
    "wrong_dims": (None, 'max_batch_size: 4\n' + IO_FP32.replace("dims: [ 4 ] },\n        {",
                                                                 "dims: [ 5 ] },\n        {", 1),
                   "the model expects 2 dimensions (shape [-1,4])"),
    "missing_input": (None, 'max_batch_size: 4\n' + IO_FP32.replace(
        ',\n        { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] } ]', " ]"),
        "configuration expects 1 inputs, model provides 2"),
    "fixed_batch": (add_sub(batch=2), 'max_batch_size: 4\n' + IO_FP32,
                    "the first dimension must be -1"),
}


@pytest.fixture(scope="module")
def onnx_server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("onnx_repo")
    write_onnx(repo, "add_sub", add_sub())  # no config.pbtxt: auto-complete
    write_onnx(repo, "add_sub_int", add_sub(elem=TensorProto.INT32))
    write_onnx(repo, "batched", add_sub(), BATCHED)
    write_onnx(repo, "strings", string_identity(), folder=True)
    write_onnx(repo, "reshaped", add_sub(batch=1), RESHAPED)
    for name, (model, config, _) in LOAD_ERRORS.items():
        write_onnx(repo, name, model if model is not None else add_sub(), config)
    with running_server(repo) as server:
        yield server


def test_auto_completed_model_serves(onnx_server):
    config = onnx_server.model_config("add_sub")
    assert config.max_batch_size == 4 and config.HasField("dynamic_batching")
    assert config.instance_group[0].count == 2
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.ones((3, 4), np.float32)
    resp = infer_one(onnx_server, "add_sub", {"INPUT0": a, "INPUT1": b})
    assert resp.error is None, resp.error
    np.testing.assert_array_equal(resp.output("OUTPUT0").data, a + b)
    np.testing.assert_array_equal(resp.output("OUTPUT1").data, a - b)
    assert resp.output("OUTPUT0").datatype == "FP32"
    meta = onnx_server.model_metadata("add_sub")
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"][0] == {"name": "INPUT0", "datatype": "FP32", "shape": [-1, 4]}


def test_int_model_and_requested_output(onnx_server):
    a = np.array([[5, 6, 7, 8]], np.int32)
    b = np.array([[1, 2, 3, 4]], np.int32)
    resp = infer_one(onnx_server, "add_sub_int", {"INPUT0": a, "INPUT1": b},
                     requested_outputs=[RequestedOutput("OUTPUT1")])
    assert [t.name for t in resp.outputs] == ["OUTPUT1"]
    assert resp.output("OUTPUT1").data.dtype == np.int32
    np.testing.assert_array_equal(resp.output("OUTPUT1").data, a - b)


def test_concurrent_requests_are_batched(onnx_server):
    before = onnx_server.statistics("batched")["model_stats"][0]
    inputs = [np.full((1 + i % 2, 4), i, np.float32) for i in range(6)]

    async def run_all():
        reqs = [make_request("batched", {"INPUT0": x, "INPUT1": x * 2}) for x in inputs]
        return await asyncio.gather(*(collect(onnx_server, r) for r in reqs))

    results = onnx_server.run(run_all())
    for x, [resp] in zip(inputs, results, strict=True):
        assert resp.error is None, resp.error
        np.testing.assert_array_equal(resp.output("OUTPUT0").data, x * 3)
        np.testing.assert_array_equal(resp.output("OUTPUT1").data, -x)
    after = settled_stats(onnx_server, "batched", before, sum(x.shape[0] for x in inputs))
    executions = int(after["execution_count"]) - int(before["execution_count"])
    inferences = int(after["inference_count"]) - int(before["inference_count"])
    assert inferences == sum(x.shape[0] for x in inputs)
    assert 1 <= executions < len(inputs)  # several requests ran in one session.run


def test_string_tensors_round_trip(onnx_server):
    text = np.array([["héllo".encode()], [b""], [b"world"]], dtype=np.object_)
    resp = infer_one(onnx_server, "strings", {"TEXT": text})
    assert resp.error is None, resp.error
    out = resp.output("ECHO")
    assert out.datatype == "BYTES" and out.data.shape == (3, 1)
    assert out.data.reshape(-1).tolist() == ["héllo".encode(), b"", b"world"]


def test_non_utf8_bytes_are_rejected(onnx_server):
    text = np.array([[b"\xff\xfe"]], dtype=np.object_)
    resp = infer_one(onnx_server, "strings", {"TEXT": text})
    assert resp.error is not None and resp.error.code == ErrorCode.INVALID_ARG
    assert "not valid UTF-8" in resp.error.message


def test_reshaped_non_batching_model(onnx_server):
    a = np.array([1, 2, 3, 4], np.float32)
    resp = infer_one(onnx_server, "reshaped", {"INPUT0": a, "INPUT1": a})
    assert resp.error is None, resp.error
    assert [t.name for t in resp.outputs] == ["OUTPUT0"]
    np.testing.assert_array_equal(resp.output("OUTPUT0").data, a * 2)  # client dims [4]


def test_request_shape_errors_come_from_the_config(onnx_server):
    with pytest.raises(ServerError) as info:
        infer_one(onnx_server, "add_sub", {"INPUT0": np.ones((1, 5), np.float32),
                                           "INPUT1": np.ones((1, 5), np.float32)})
    assert info.value.code == ErrorCode.INVALID_ARG


@pytest.mark.parametrize("name", sorted(LOAD_ERRORS))
def test_load_errors_make_the_model_unavailable(onnx_server, name):
    assert_load_failed(onnx_server, name, LOAD_ERRORS[name][2])


def _config(text: str) -> mc.ModelConfig:
    config = parse_config_text(text, "test")
    config.name = "m"
    return config


def test_session_settings_from_config(caplog):
    import onnxruntime as ort

    config = _config("""
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
parameters { key: "inter_op_thread_count" value: { string_value: "2" } }
parameters { key: "execution_mode" value: { string_value: "1" } }
parameters { key: "enable_mem_arena" value: { string_value: "0" } }
parameters { key: "no_such_knob" value: { string_value: "1" } }
optimization { graph { level: -1 } }
""")
    with caplog.at_level(logging.WARNING):
        settings = session_settings(config, "KIND_CPU", 0)
    opts = settings.options
    assert opts.intra_op_num_threads == 1 and opts.inter_op_num_threads == 2
    assert opts.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert opts.enable_cpu_mem_arena is False
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert settings.providers == ["CPUExecutionProvider"]
    assert "parameter 'no_such_knob' is not used" in caplog.text


def test_session_settings_warnings(caplog):
    config = _config("""
optimization { execution_accelerators { gpu_execution_accelerator: [ { name: "tensorrt" } ] } }
parameters { key: "cudnn_conv_algo_search" value: { string_value: "1" } }
""")
    with caplog.at_level(logging.WARNING):
        settings = session_settings(config, "KIND_GPU", 0)
    if settings.device == "cpu":  # onnxruntime without the CUDA execution provider
        assert "no CUDAExecutionProvider" in caplog.text
        assert "CUDA parameters ['cudnn_conv_algo_search'] have no effect" in caplog.text
    else:
        assert settings.providers[0][1]["cudnn_conv_algo_search"] == "HEURISTIC"
    assert "execution accelerator 'tensorrt' is accepted but not applied" in caplog.text
    with pytest.raises(ServerError, match="expects an integer"):
        session_settings(_config('parameters { key: "intra_op_thread_count" '
                                 'value: { string_value: "many" } }'), "KIND_CPU", 0)
