"""The tensorflow backend behind the real frontends, through tritonclient: a SavedModel
auto-completed from its signature, another signature chosen by TF_SIGNATURE_DEF, a GraphDef
of string ops, dynamic batching, session sharing and load errors."""

from __future__ import annotations

import concurrent.futures

import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from e2e_live import LiveServer, e2e_options
from tensorflow_fixtures import save_add_sub_savedmodel, save_upper_graphdef

GRAPHDEF_CONFIG = """
platform: "tensorflow_graphdef"
max_batch_size: 8
dynamic_batching { max_queue_delay_microseconds: 200000 }
input [ { name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "UPPER" data_type: TYPE_STRING dims: [ 1 ] },
         { name: "LEN" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""
SCALED_CONFIG = """
platform: "tensorflow_savedmodel"
max_batch_size: 4
instance_group [ { kind: KIND_CPU count: 2 } ]
parameters { key: "TF_SIGNATURE_DEF" value: { string_value: "scaled" } }
parameters { key: "MAX_SESSION_SHARE_COUNT" value: { string_value: "2" } }
parameters { key: "TF_NUM_INTRA_THREADS" value: { string_value: "1" } }
input [ { name: "X" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 4 ] } ]
"""
BAD_TYPE_CONFIG = SCALED_CONFIG.replace('name: "X" data_type: TYPE_FP32',
                                        'name: "X" data_type: TYPE_INT32')


@pytest.fixture(scope="module")
def tf_live(tmp_path_factory):
    pytest.importorskip("tensorflow", reason="tensorflow-cpu is installed by make test")
    repo = tmp_path_factory.mktemp("tf_repo")
    saved = save_add_sub_savedmodel(tmp_path_factory.mktemp("saved") / "model.savedmodel")
    import shutil

    for name, config in (("tf_auto", None), ("tf_scaled", SCALED_CONFIG),
                         ("tf_bad_type", BAD_TYPE_CONFIG)):
        shutil.copytree(saved, repo / name / "1" / "model.savedmodel")
        if config is not None:
            (repo / name / "config.pbtxt").write_text(config)
    save_upper_graphdef(repo / "tf_upper" / "1" / "model.graphdef")
    (repo / "tf_upper" / "config.pbtxt").write_text(GRAPHDEF_CONFIG)
    server = LiveServer(e2e_options(model_repositories=[repo], exit_on_error=False,
                                    strict_readiness=False))
    yield server
    server.stop()


def test_savedmodel_without_config_is_completed_from_its_signature(tf_live):
    client = th.InferenceServerClient(tf_live.http_url)
    try:
        config = client.get_model_config("tf_auto")
        assert config["platform"] == "tensorflow_savedmodel"
        assert config["max_batch_size"] == 4 and "dynamic_batching" in config
        assert sorted((i["name"], i["data_type"], [int(d) for d in i["dims"]])
                      for i in config["input"]) == [("INPUT0", "TYPE_FP32", [4]),
                                                    ("INPUT1", "TYPE_FP32", [4])]
        a = np.arange(8, dtype=np.float32).reshape(2, 4)
        b = np.ones((2, 4), np.float32)
        inputs = []
        for name, value in (("INPUT0", a), ("INPUT1", b)):
            inp = th.InferInput(name, [2, 4], "FP32")
            inp.set_data_from_numpy(value, binary_data=True)
            inputs.append(inp)
        result = client.infer("tf_auto", inputs)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    finally:
        client.close()


def test_signature_def_parameter_picks_another_signature(tf_live):
    client = tg.InferenceServerClient(tf_live.grpc_url)
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    inp = tg.InferInput("X", [1, 4], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("tf_scaled", [inp])
    np.testing.assert_allclose(result.as_numpy("Y"), 3 * x)
    client.close()
    [version] = [v for v in tf_live.server.models.all_versions() if v.name == "tf_scaled"]
    sessions = version._backend_model._sessions
    assert len(sessions) == 1 and sessions[0][1] == 2  # two instances share one session


def test_graphdef_string_tensors_batched_across_concurrent_requests(tf_live):
    words = [b"alpha", b"Beta", "\u00e9t\u00e9".encode(), b""]

    def one(word: bytes):
        client = th.InferenceServerClient(tf_live.http_url)
        try:
            inp = th.InferInput("TEXT", [1, 1], "BYTES")
            inp.set_data_from_numpy(np.array([[word]], dtype=object))
            return client.infer("tf_upper", [inp])
        finally:
            client.close()

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, words))
    for word, result in zip(words, results, strict=True):
        assert result.as_numpy("UPPER")[0, 0] == word.upper()
        assert result.as_numpy("LEN")[0, 0] == len(word)
    client = th.InferenceServerClient(tf_live.http_url)
    try:
        stats = client.get_inference_statistics("tf_upper")["model_stats"][0]
    finally:
        client.close()
    assert stats["inference_count"] == 4 and stats["execution_count"] < 4  # batched


def test_a_type_mismatch_fails_the_load_with_the_reason(tf_live):
    client = th.InferenceServerClient(tf_live.http_url)
    try:
        index = {m["name"]: m for m in client.get_model_repository_index()}
    finally:
        client.close()
    assert index["tf_bad_type"]["state"] == "UNAVAILABLE"
    assert ("configuration expects datatype TYPE_INT32 for input 'X', model provides TYPE_FP32"
            in index["tf_bad_type"]["reason"])
