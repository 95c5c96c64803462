"""The openvino backend behind the real frontends, through tritonclient: IR and ONNX
models, a static batch of max_batch_size with ENABLE_BATCH_PADDING, auto-complete from
the model's layout, the backend's parameters, and load errors as Triton words them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from e2e_live import LiveServer, e2e_options
from onnx_fixtures import add_sub, write_onnx
from openvino_fixtures import add_sub_expected, save_add_sub
from tritonclient.utils import InferenceServerException

IO = """
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
        { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
         { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] } ]
"""


def _params(**kv: str) -> str:
    return "".join(f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n'
                   for k, v in kv.items())


MODELS = {
    # name: (config.pbtxt, IR with a batch layout?)
    "ov_padded": ('backend: "openvino"\nmax_batch_size: 4\n' + IO + _params(
        ENABLE_BATCH_PADDING="YES", NUM_STREAMS="1", PERFORMANCE_HINT="LATENCY",
        INFERENCE_NUM_THREADS="1"), False),
    "ov_static": ('backend: "openvino"\nmax_batch_size: 2\n' + IO, False),
    "ov_nobatch": ('backend: "openvino"\nmax_batch_size: 0\n'
                   + IO.replace("dims: [ 4 ]", "dims: [ 1, 4 ]"), False),
    # Triton needs the backend named (a config with just that, or a folder 'x.openvino')
    "ov_auto": ('backend: "openvino"\n', True),
    "ov_bad_param": ('backend: "openvino"\nmax_batch_size: 4\n' + IO
                     + _params(NUM_STREAMS="many"), False),
    "ov_bad_input": ('backend: "openvino"\nmax_batch_size: 4\n'
                     + IO.replace('"INPUT1"', '"WRONG"'), False),
    "ov_bad_dims": ('backend: "openvino"\nmax_batch_size: 0\n' + IO, False),
}


@pytest.fixture(scope="module")
def ov_live(tmp_path_factory):
    pytest.importorskip("openvino", reason="openvino is in the [test] extra")
    repo = tmp_path_factory.mktemp("ov_repo")
    for name, (config, layout) in MODELS.items():
        save_add_sub(repo / name / "1" / "model.xml", batch_layout=layout)
        (repo / name / "config.pbtxt").write_text(config)
    # an ONNX file given to OpenVINO (Triton's backend reads any format OpenVINO reads)
    write_onnx(repo, "ov_onnx", add_sub(batch=None), 'backend: "openvino"\n'
               'default_model_filename: "model.onnx"\nmax_batch_size: 0\n' + IO)
    server = LiveServer(e2e_options(model_repositories=[repo], exit_on_error=False,
                                    strict_readiness=False))
    yield server
    server.stop()


def _http_infer(url: str, model: str, a: np.ndarray, b: np.ndarray):
    client = th.InferenceServerClient(url)
    try:
        inputs = []
        for name, value in (("INPUT0", a), ("INPUT1", b)):
            inp = th.InferInput(name, list(value.shape), "FP32")
            inp.set_data_from_numpy(value)
            inputs.append(inp)
        return client.infer(model, inputs)
    finally:
        client.close()


def test_padding_runs_smaller_batches_at_the_static_batch_size(ov_live):
    rng = np.random.default_rng(0)
    for batch in (1, 3, 4):
        a = rng.random((batch, 4), dtype=np.float32)
        b = rng.random((batch, 4), dtype=np.float32)
        result = _http_infer(ov_live.http_url, "ov_padded", a, b)
        want_sum, want_diff = add_sub_expected(a, b)
        np.testing.assert_allclose(result.as_numpy("OUTPUT0"), want_sum, rtol=1e-6)
        np.testing.assert_allclose(result.as_numpy("OUTPUT1"), want_diff, rtol=1e-6)


def test_without_padding_a_smaller_batch_is_refused_as_triton_words_it(ov_live):
    a = np.ones((1, 4), np.float32)
    with pytest.raises(InferenceServerException, match="ENABLE_BATCH_PADDING"):
        _http_infer(ov_live.http_url, "ov_static", a, a)
    result = _http_infer(ov_live.http_url, "ov_static", np.ones((2, 4), np.float32),
                         np.full((2, 4), 2, np.float32))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), np.full((2, 4), -1, np.float32))


def test_grpc_on_a_model_without_batching_and_on_an_onnx_file(ov_live):
    client = tg.InferenceServerClient(ov_live.grpc_url)
    a = np.arange(4, dtype=np.float32).reshape(1, 4)
    b = np.ones((1, 4), np.float32)
    for model in ("ov_nobatch", "ov_onnx"):
        shape = [1, 4] if model == "ov_nobatch" else [4]
        inputs = []
        for name, value in (("INPUT0", a), ("INPUT1", b)):
            inp = tg.InferInput(name, shape, "FP32")
            inp.set_data_from_numpy(value.reshape(shape))
            inputs.append(inp)
        result = client.infer(model, inputs)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0").reshape(1, 4), a + b)
    client.close()


def test_auto_complete_reads_batching_and_tensors_from_the_model_layout(ov_live):
    client = th.InferenceServerClient(ov_live.http_url)
    try:
        config = client.get_model_config("ov_auto")
    finally:
        client.close()
    assert config["max_batch_size"] == 4  # default-max-batch-size
    assert "dynamic_batching" in config
    assert [(i["name"], i["data_type"], [int(d) for d in i["dims"]]) for i in config["input"]] == [
        ("INPUT0", "TYPE_FP32", [4]), ("INPUT1", "TYPE_FP32", [4])]
    assert {o["name"] for o in config["output"]} == {"OUTPUT0", "OUTPUT1"}
    a, b = np.ones((3, 4), np.float32), np.full((3, 4), 5, np.float32)
    with pytest.raises(InferenceServerException, match="ENABLE_BATCH_PADDING"):
        _http_infer(ov_live.http_url, "ov_auto", a, b)  # static batch 4, no padding
    result = _http_infer(ov_live.http_url, "ov_auto", np.ones((4, 4), np.float32),
                         np.full((4, 4), 5, np.float32))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.full((4, 4), 6, np.float32))


def test_parameters_reach_the_compiled_model(ov_live):
    [version] = [v for v in ov_live.server.models.all_versions() if v.name == "ov_padded"]
    compiled = version._backend_model.compiled("CPU")
    assert str(compiled.get_property("NUM_STREAMS")) == "1"
    assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == 1
    assert "LATENCY" in str(compiled.get_property("PERFORMANCE_HINT"))


@pytest.mark.parametrize("model, reason", [
    ("ov_bad_param", "expected the parameter 'NUM_STREAMS' to be AUTO, NUMA or a number, got many"),
    ("ov_bad_input", "unexpected inference input 'WRONG', allowed inputs are: INPUT0, INPUT1"),
    ("ov_bad_dims", "the model expects 2 dimensions (shape [-1, 4]) but the model configuration "
                    "specifies 1 dimensions"),
])
def test_load_errors_name_the_problem(ov_live, model, reason):
    client = th.InferenceServerClient(ov_live.http_url)
    try:
        index = {m["name"]: m for m in client.get_model_repository_index()}
    finally:
        client.close()
    assert index[model]["state"] == "UNAVAILABLE"
    assert reason in index[model]["reason"], json.dumps(index[model])
