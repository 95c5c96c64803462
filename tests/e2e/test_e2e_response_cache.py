"""End to end: the response cache (--cache-config local,size=N with response_cache in
the model config) through tritonclient over HTTP and gRPC: a hit equals the miss that
filled it byte for byte, the key tells shapes and requested outputs apart, an ensemble's
top-level request is cached, LRU eviction, and the cache statistics and metrics."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from e2e_live import LiveServer, e2e_options
from prometheus_client.parser import text_string_to_metric_families

MODEL_PY = Path(__file__).parent / "cache_models" / "noisy_model.py"
CACHE_BYTES = 8192
IO = """
max_batch_size: 4
input [ { name: "IN" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ -1 ] },
         { name: "TAG" data_type: TYPE_STRING dims: [ 1 ] } ]
"""
CONFIGS = {
    "noisy": 'backend: "python"\n' + IO + "response_cache { enable: true }\n",
    "plain": 'backend: "python"\n' + IO,
    "noisy_ens": 'platform: "ensemble"\n' + IO + """
response_cache { enable: true }
ensemble_scheduling { step [ { model_name: "plain" model_version: -1
  input_map { key: "IN" value: "IN" }
  output_map { key: "OUT" value: "OUT" } output_map { key: "TAG" value: "TAG" } } ] }
""",
}


@pytest.fixture(scope="module")
def cache_live(tmp_path_factory):
    repo = tmp_path_factory.mktemp("cache_repo")
    for name, config in CONFIGS.items():
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(config)
        if "python" in config:
            shutil.copy(MODEL_PY, repo / name / "1" / "model.py")
    server = LiveServer(e2e_options(model_repositories=[repo],
                                    cache_config={"cache": "local", "size": str(CACHE_BYTES)}))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def clients(cache_live):
    with cache_live.clients() as pair:
        yield pair


@pytest.fixture(scope="module")
def hc(clients):
    return clients[0]


@pytest.fixture(scope="module")
def gc(clients):
    return clients[1]


def _infer(client, module, model, x, outputs=None):
    inp = module.InferInput("IN", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    requested = [module.InferRequestedOutput(n) for n in outputs] if outputs else None
    return client.infer(model, [inp], outputs=requested)


def _as_bytes(result, names=("OUT", "TAG")) -> dict:
    return {n: result.as_numpy(n).tobytes() if result.as_numpy(n).dtype != np.object_
            else [bytes(v) for v in result.as_numpy(n).reshape(-1)] for n in names}


def _stats(client, model) -> dict:
    """Statistics as JSON; over gRPC int64 fields are strings and zero fields are left out."""
    kw = {"as_json": True} if isinstance(client, tg.InferenceServerClient) else {}
    return client.get_inference_statistics(model, **kw)["model_stats"][0]


def _counts(stats) -> tuple[int, int, int]:
    s = stats["inference_stats"]
    return (int(s["cache_hit"].get("count", 0)), int(s["cache_miss"].get("count", 0)),
            int(stats.get("execution_count", 0)))


def _settled(read, expected, timeout_s: float = 5.0):
    """A Python model's execution is counted when its execute() returns, which can be a
    moment after the client already holds the response (as in Triton, whose backends
    report statistics after sending): read until the count settles or time runs out."""
    deadline = time.monotonic() + timeout_s
    value = read()
    while value != expected and time.monotonic() < deadline:
        time.sleep(0.02)
        value = read()
    return value


def test_hit_is_byte_identical_to_the_miss_over_http_and_grpc(hc, gc):
    x = np.array([[1, 2, 3, 4]], np.float32)
    hits, misses, runs = _counts(_stats(hc, "noisy"))
    first = _infer(hc, th, "noisy", x)
    second = _infer(hc, th, "noisy", x)
    assert _as_bytes(second) == _as_bytes(first)
    assert second.get_response()["parameters"] == first.get_response()["parameters"]
    via_grpc = _infer(gc, tg, "noisy", x)  # one cache for both protocols
    assert _as_bytes(via_grpc) == _as_bytes(first)
    assert via_grpc.get_response(as_json=True)["parameters"]["nonce"]["string_param"] == \
        first.get_response()["parameters"]["nonce"]
    other = _infer(hc, th, "noisy", x + 1)
    assert _as_bytes(other)["TAG"] != _as_bytes(first)["TAG"]  # a new execution
    expected = (hits + 2, misses + 2, runs + 2)
    assert _settled(lambda: _counts(_stats(hc, "noisy")), expected) == expected
    stats = _stats(hc, "noisy")
    assert int(stats["inference_stats"]["cache_hit"]["ns"]) > 0
    assert int(stats["inference_stats"]["cache_miss"]["ns"]) > 0
    assert int(stats["inference_stats"]["success"]["count"]) >= 4


def test_key_holds_shape_and_requested_outputs(hc, gc):
    x = np.array([[5, 6, 7, 8]], np.float32)
    base = _infer(gc, tg, "noisy", x)
    _, misses, _ = _counts(_stats(gc, "noisy"))
    reshaped = _infer(gc, tg, "noisy", x.reshape(2, 2))  # same bytes, another shape
    only_out = _infer(gc, tg, "noisy", x, outputs=["OUT"])
    assert reshaped.as_numpy("OUT").shape == (2, 2)
    assert only_out.as_numpy("TAG") is None
    assert only_out.as_numpy("OUT").tobytes() != base.as_numpy("OUT").tobytes()
    assert _counts(_stats(gc, "noisy"))[1] == misses + 2
    again = _infer(gc, tg, "noisy", x, outputs=["OUT"])
    assert again.as_numpy("OUT").tobytes() == only_out.as_numpy("OUT").tobytes()


def test_ensemble_top_level_request_is_cached(hc):
    x = np.array([[9, 9, 9, 9]], np.float32)
    step_runs = int(_stats(hc, "plain")["execution_count"])
    first = _infer(hc, th, "noisy_ens", x)
    second = _infer(hc, th, "noisy_ens", x)
    assert _as_bytes(second) == _as_bytes(first)
    assert _settled(lambda: int(_stats(hc, "plain")["execution_count"]),
                    step_runs + 1) == step_runs + 1  # the hit skipped it
    stats = _stats(hc, "noisy_ens")
    ens = stats["inference_stats"]
    assert (ens["cache_hit"]["count"], ens["cache_miss"]["count"]) == (1, 1)
    assert ens["success"]["count"] == 2 and stats["execution_count"] == 1  # hits run nothing


def test_lru_eviction_in_bytes(hc, cache_live):
    # each entry holds a 2 KiB OUT: three fit in the 8 KiB cache, a fourth evicts the LRU
    xs = [np.full((1, 512), 100 + i, np.float32) for i in range(4)]
    firsts = [_as_bytes(_infer(hc, th, "noisy", x)) for x in xs[:3]]
    assert _as_bytes(_infer(hc, th, "noisy", xs[0])) == firsts[0]  # xs[0] now most recent
    _infer(hc, th, "noisy", xs[3])  # evicts xs[1], the least recently used
    assert _as_bytes(_infer(hc, th, "noisy", xs[0])) == firsts[0]
    assert _as_bytes(_infer(hc, th, "noisy", xs[1])) != firsts[1]  # evicted: ran again
    assert cache_live.server.response_cache.used_bytes() <= CACHE_BYTES


def test_cache_metrics(hc, cache_live):
    _infer(hc, th, "noisy", np.array([[3, 1, 4, 1]], np.float32))
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(cache_live.metrics_url).text)}

    def value(name, **labels):
        for s in families[name].samples:
            if all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
        return None

    stats = _stats(hc, "noisy")["inference_stats"]
    assert value("nv_cache_num_hits_per_model", model="noisy", version="1") == stats["cache_hit"]["count"]
    assert value("nv_cache_num_misses_per_model", model="noisy", version="1") == stats["cache_miss"]["count"]
    assert value("nv_cache_hit_duration_per_model", model="noisy") == stats["cache_hit"]["ns"] // 1000
    assert value("nv_cache_miss_duration_per_model", model="noisy") == stats["cache_miss"]["ns"] // 1000
    assert value("nv_cache_num_hits_per_model", model="plain") is None  # no cache, no metric
    snapshot = cache_live.server.response_cache.snapshot()
    for name in ("nv_cache_num_entries", "nv_cache_num_lookups", "nv_cache_num_hits",
                 "nv_cache_num_misses", "nv_cache_num_evictions", "nv_cache_util"):
        assert value(name) == pytest.approx(snapshot[name]), name
    assert value("nv_cache_num_lookups") == value("nv_cache_num_hits") + value("nv_cache_num_misses")
    assert 0 < value("nv_cache_util") <= 1
