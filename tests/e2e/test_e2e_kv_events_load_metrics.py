"""KV-aware routing hooks on a served tensorrt_llm model: --kv-events-config publishes
vLLM-format KV events that rebuild the model's prefix cache, and a request with
`endpoint-load-metrics-format: json|text` gets Triton's endpoint-load-metrics header."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import httpx
import msgpack
import pytest
import zmq
from e2e_live import LiveServer, e2e_options
from llm_fixtures import make_tiny_checkpoint

from llmserve.llm.kv_events import external_hash

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import fill_demo_repository as fill  # noqa: E402


@pytest.fixture(scope="module")
def kv_live(tmp_path_factory):
    base = tmp_path_factory.mktemp("kv_events")
    ckpt = make_tiny_checkpoint(base / "ckpt")
    repo = base / "repo"
    shutil.copytree(ROOT / "all_models" / "inflight_batcher_llm" / "tensorrt_llm",
                    repo / "tensorrt_llm")
    values = fill.model_values(ckpt, decoupled=True, max_batch_size=8)["tensorrt_llm"]
    fill.fill_file(repo / "tensorrt_llm" / "config.pbtxt", values)
    endpoint = f"ipc://{base}/kv"
    server = LiveServer(e2e_options(
        model_repositories=[repo],
        kv_events_config={"enable_kv_cache_events": True, "endpoint": endpoint, "topic": ""}))
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    time.sleep(0.2)
    yield server, sub
    sub.close(linger=0)
    server.stop()


def _generate(url: str, ids: list[int], headers: dict | None = None) -> httpx.Response:
    body = {"input_ids": ids, "input_lengths": [len(ids)], "request_output_len": [3]}
    return httpx.post(f"http://{url}/v2/models/tensorrt_llm/generate", json=body,
                      headers=headers or {}, timeout=60)


def test_kv_events_rebuild_the_prefix_cache_of_the_served_model(kv_live):
    server, sub = kv_live
    shared = list(range(10, 90))
    for tail in ([5, 6, 7], [8, 9]):
        assert _generate(server.http_url, shared + tail).status_code == 200
    blocks: set[int] = set()
    deadline = time.monotonic() + 5
    [version] = [v for v in server.server.models.all_versions() if v.name == "tensorrt_llm"]
    executor = version._backend_model.model.executor
    want = {external_hash(h) for h in executor.block_manager.cached}
    while blocks != want and time.monotonic() < deadline and sub.poll(500):
        _, _, payload = sub.recv_multipart()
        for event in msgpack.unpackb(payload)["events"]:
            if event["type"] == "BlockStored":
                blocks.update(event["block_hashes"])
            elif event["type"] == "BlockRemoved":
                blocks.difference_update(event["block_hashes"])
    assert want and blocks == want


@pytest.mark.parametrize("kind", ["json", "text"])
def test_endpoint_load_metrics_header(kv_live, kind):
    server, _ = kv_live
    time.sleep(0.3)  # the stats thread publishes the KV gauges
    response = _generate(server.http_url, [1, 2, 3], {"endpoint-load-metrics-format": kind})
    assert response.status_code == 200
    value = response.headers["endpoint-load-metrics"]
    if kind == "json":
        assert value.startswith("JSON ")
        named = json.loads(value[5:])["named_metrics"]
        assert 0.0 <= named["kv_cache_utilization"] <= 1.0
        assert named["max_token_capacity"] > 0 and named["queue_depth"] >= 0
    else:
        assert value.startswith("TEXT named_metrics.kv_cache_utilization=")
        assert "named_metrics.max_token_capacity=" in value
    plain = _generate(server.http_url, [1, 2, 3])
    assert "endpoint-load-metrics" not in plain.headers
