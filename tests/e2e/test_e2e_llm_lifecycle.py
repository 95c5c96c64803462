"""End to end over real sockets for the inflight_batcher_llm set: a dropped HTTP stream
or a cancelled gRPC stream ends its generation and frees its KV blocks; a full executor
queue rejects requests with HTTP 503 / gRPC UNAVAILABLE and the server keeps serving."""

from __future__ import annotations

import json
import queue
import socket
import time

import numpy as np
import pytest
import tritonclient.grpc as tg
from llm_e2e_helpers import shared_llm_e2e

PROMPT = "The quick brown fox"
LONG = 900  # tokens a request would generate if nothing stopped it (no end id)


@pytest.fixture(scope="module")
def llm(request, tmp_path_factory):
    return shared_llm_e2e(request.config, tmp_path_factory)


def generated_tokens(llm, model: str = "tensorrt_llm") -> float:
    labels = {"model": model, "version": "1"}
    value = llm.server.metrics_registry.get_sample_value("nv_llm_generated_tokens_total", labels)
    return value or 0.0


def wait_blocks_free(executor, total: int, timeout: float = 15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = executor.get_kv_cache_stats()
        if stats.used_num_blocks == 0 and stats.free_num_blocks == total:
            return stats
        time.sleep(0.02)
    return executor.get_kv_cache_stats()


def wait_busy(executor, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while executor.get_kv_cache_stats().used_num_blocks == 0:
        assert time.monotonic() < deadline, "the request never started"
        time.sleep(0.01)


def open_stream(llm, model: str, body: dict) -> socket.socket:
    """A raw generate_stream request whose connection the test closes when it wants."""
    data = json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", llm.live.frontends.http_port))
    s.sendall(b"POST /v2/models/%s/generate_stream HTTP/1.1\r\nHost: x\r\n"
              b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
              % (model.encode(), len(data), data))
    s.settimeout(15)
    return s


def read_events(s: socket.socket, count: int) -> bytes:
    data = b""
    while data.count(b"data: ") < count:
        chunk = s.recv(4096)
        assert chunk, data
        data += chunk
    assert b" 200 " in data.split(b"\r\n", 1)[0]
    return data


@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls"])
def test_dropped_http_stream_cancels_and_frees_kv_blocks(llm, model):
    executor = llm.executor()
    total = executor.get_kv_cache_stats().free_num_blocks
    assert executor.get_kv_cache_stats().used_num_blocks == 0
    before = generated_tokens(llm)
    body = {"text_input": PROMPT, "max_tokens": LONG, "end_id": -1, "stream": True}
    with open_stream(llm, model, body) as s:
        read_events(s, 2)
        assert executor.get_kv_cache_stats().used_num_blocks > 0  # still generating
    stats = wait_blocks_free(executor, total)
    assert (stats.used_num_blocks, stats.free_num_blocks) == (0, total)
    time.sleep(0.3)  # the metrics thread catches up
    assert 0 < generated_tokens(llm) - before < LONG - 50
    # and the model still serves
    assert llm.generate(model, {"text_input": PROMPT, "max_tokens": 4})["text_output"] == \
        llm.greedy_text(PROMPT, 4)


def test_cancelled_grpc_stream_frees_kv_blocks(llm):
    executor = llm.executor()
    total = executor.get_kv_cache_stats().free_num_blocks
    before = generated_tokens(llm)
    values = {"text_input": np.array([[PROMPT.encode()]], dtype=object),
              "max_tokens": np.array([[LONG]], np.int32), "end_id": np.array([[-1]], np.int32),
              "stream": np.array([[True]])}
    inputs = []
    for name, value in values.items():
        dtype = {"O": "BYTES", "b": "BOOL", "i": "INT32"}[value.dtype.kind]
        inputs.append(tg.InferInput(name, list(value.shape), dtype))
        inputs[-1].set_data_from_numpy(value)
    q: queue.Queue = queue.Queue()
    client = tg.InferenceServerClient(llm.live.grpc_url)
    client.start_stream(callback=lambda result, error: q.put((result, error)))
    try:
        client.async_stream_infer("ensemble", inputs)
        for _ in range(2):
            result, error = q.get(timeout=15)
            assert error is None, error
    finally:
        client.stop_stream(cancel_requests=True)
        client.close()
    stats = wait_blocks_free(executor, total)
    assert (stats.used_num_blocks, stats.free_num_blocks) == (0, total)
    time.sleep(0.3)
    assert 0 < generated_tokens(llm) - before < LONG - 50


def _ids_body(llm, n: int, **extra) -> dict:
    ids = llm.encode(PROMPT)
    return {"input_ids": ids, "input_lengths": len(ids), "request_output_len": n, "end_id": -1, **extra}


def test_queue_full_rejects_over_http_and_grpc_and_keeps_serving(llm):
    # qf_tensorrt_llm: engine_max_batch_size 1 and max_queue_size 1, so with one request
    # running and one waiting, every further request is refused at once.
    model = "qf_tensorrt_llm"
    executor = llm.executor(model)
    total = executor.get_kv_cache_stats().free_num_blocks
    labels = {"model": model, "version": "1", "request_type": "waiting"}
    long_body = _ids_body(llm, LONG, streaming=True)
    before = generated_tokens(llm, model)
    running = open_stream(llm, model, long_body)
    waiting = None
    try:
        read_events(running, 1)
        waiting = open_stream(llm, model, long_body)
        deadline = time.monotonic() + 15
        while llm.server.metrics_registry.get_sample_value("nv_trt_llm_request_metrics", labels) != 1:
            assert time.monotonic() < deadline, "the second request never queued"
            time.sleep(0.02)
        # the KV utilisation gauge that the Gateway API Inference Extension reads
        fraction = llm.server.metrics_registry.get_sample_value(
            "nv_trt_llm_kv_cache_block_metrics",
            {"model": model, "version": "1", "kv_cache_block_type": "fraction"})
        assert fraction is not None and 0 < fraction <= 1

        rejected = llm.http.post(f"/v2/models/{model}/generate", json=_ids_body(llm, 2))
        assert rejected.status_code == 503, rejected.text
        assert "Exceeds maximum queue size" in rejected.json()["error"]

        client = tg.InferenceServerClient(llm.live.grpc_url)
        q: queue.Queue = queue.Queue()
        ids = np.array([llm.encode(PROMPT)], np.int32)
        inputs = [tg.InferInput("input_ids", list(ids.shape), "INT32"),
                  tg.InferInput("input_lengths", [1, 1], "INT32"),
                  tg.InferInput("request_output_len", [1, 1], "INT32")]
        inputs[0].set_data_from_numpy(ids)
        inputs[1].set_data_from_numpy(np.array([[ids.shape[1]]], np.int32))
        inputs[2].set_data_from_numpy(np.array([[2]], np.int32))
        client.start_stream(callback=lambda result, error: q.put((result, error)),
                            headers={"triton_grpc_error": "true"})
        try:
            client.async_stream_infer(model, inputs)
            result, error = q.get(timeout=15)
        finally:
            client.stop_stream()
            client.close()
        assert result is None and error.status() == "StatusCode.UNAVAILABLE", error
        assert "Exceeds maximum queue size" in error.message()
        assert executor.get_kv_cache_stats().used_num_blocks > 0  # the first still runs
    finally:
        running.close()
        if waiting is not None:
            waiting.close()
    # both dropped streams end (the running one and the queued one): the model serves again
    stats = wait_blocks_free(executor, total)
    assert (stats.used_num_blocks, stats.free_num_blocks) == (0, total)
    time.sleep(0.3)
    assert 0 < generated_tokens(llm, model) - before < LONG - 50  # the queued one never ran
    gen = llm.greedy_ids(llm.encode(PROMPT), 6, stop_at_eos=False)
    for _ in range(2):  # the queue slot is free again
        again = llm.http.post(f"/v2/models/{model}/generate", json=_ids_body(llm, 6))
        assert again.status_code == 200, again.text
        assert again.json()["output_ids"] == gen
