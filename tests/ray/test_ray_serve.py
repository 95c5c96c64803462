"""llmserve on Ray Serve with 2 replicas (tests/ray/conftest.py): requests through the
openai client and tritonclient spread over both replicas, a shared 512-token prefix
stays on one replica and reuses its KV blocks, errors keep the single-process shape,
and a replica killed mid-load fails only its own requests with a clear 503."""

from __future__ import annotations

import json
import queue
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest
import tritonclient.http as th

from llmserve.ray_serve.forward import REPLICA_HEADER

REPLICA = REPLICA_HEADER.decode()


def _replicas(served) -> list[str]:
    """The full ids of the running replicas, as the llmserve-replica header names them."""
    from ray import serve

    status = serve.status().applications["llmserve"].deployments["llmserve_replica"]
    assert status.replica_states.get("RUNNING") == 2, status
    seen: set[str] = set()
    deadline = time.monotonic() + 30
    while len(seen) < 2 and time.monotonic() < deadline:
        r = httpx.get(f"http://{served.http_url}/v2/health/ready", timeout=10)
        seen.add(r.headers[REPLICA])
    assert len(seen) == 2
    return sorted(seen)


def _stats(served, replica: str, model: str) -> dict:
    """One replica's statistics of a model (the router honours the replica header)."""
    r = httpx.get(f"http://{served.http_url}/v2/models/{model}/stats",
                  headers={REPLICA: replica}, timeout=10)
    assert r.status_code == 200 and r.headers[REPLICA] == replica
    return r.json()["model_stats"][0]


def test_200_requests_openai_and_tritonclient_spread_over_both_replicas(served):
    replicas = _replicas(served)
    before = {r: int(_stats(served, r, "ensemble")["inference_count"]) for r in replicas}
    client = openai.OpenAI(base_url=f"http://{served.http_url}/v1", api_key="x",
                           max_retries=0, timeout=120)

    def with_openai(i: int) -> str:
        raw = client.completions.with_raw_response.create(
            model="ensemble", prompt=f"request {i}: the quick brown fox", max_tokens=2)
        assert raw.parse().choices[0].finish_reason in ("length", "stop")
        return raw.headers[REPLICA]

    def with_tritonclient(i: int) -> None:
        c = th.InferenceServerClient(served.http_url, network_timeout=120)
        try:
            text = th.InferInput("text_input", [1, 1], "BYTES")
            text.set_data_from_numpy(np.array([[f"hello {i} world".encode()]], dtype=object))
            tokens = th.InferInput("max_tokens", [1, 1], "INT32")
            tokens.set_data_from_numpy(np.array([[2]], dtype=np.int32))
            result = c.infer("ensemble", [text, tokens])
            assert result.as_numpy("text_output").shape[0] == 1
        finally:
            c.close()

    with ThreadPoolExecutor(8) as pool:
        by_openai = list(pool.map(with_openai, range(100)))
        list(pool.map(with_tritonclient, range(100)))
    after = {r: int(_stats(served, r, "ensemble")["inference_count"]) for r in replicas}
    served_by = {r: after[r] - before[r] for r in replicas}
    print("requests per replica (openai + tritonclient):", served_by,
          "openai only:", dict(Counter(by_openai)))
    assert sum(served_by.values()) == 200
    # least loaded with ties broken at random: both replicas take a real share
    assert min(served_by.values()) >= 40, served_by
    assert set(by_openai) == set(replicas)


def _generate_ids(served, ids: list[int]) -> tuple[str, int]:
    """(replica, reused KV blocks) of one tensorrt_llm request through the generate
    extension (tensorrt_llm is decoupled: KServe infer over HTTP refuses it)."""
    body = {"input_ids": ids, "input_lengths": [len(ids)], "request_output_len": [2],
            "return_kv_cache_reuse_stats": [True]}
    r = httpx.post(f"http://{served.http_url}/v2/models/tensorrt_llm/generate", json=body,
                   timeout=120)
    assert r.status_code == 200, r.text
    return r.headers[REPLICA], int(np.ravel(r.json()["kv_cache_reused_blocks"])[0])


def test_shared_512_token_prefix_is_routed_to_one_replica_and_reused(served):
    replicas = _replicas(served)
    block = 32  # engine_kv_block_size of the filled tensorrt_llm config
    prefixes = [[(7 * g + i) % 250 + 4 for i in range(512)] for g in range(2)]
    before = {r: int(_stats(served, r, "tensorrt_llm")["inference_count"]) for r in replicas}
    per_group = 8
    reused: list[int] = []
    for g, prefix in enumerate(prefixes):
        home, _ = _generate_ids(served, prefix + [5, 6, 7])  # fills one replica's cache
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(lambda i, p=prefix: _generate_ids(served, p + [9, i + 10, 11]),
                                range(per_group - 1)))
        print(f"prefix {g}: replicas {Counter(r for r, _ in got)}, first on {home}")
        # every request of the group went to the replica holding the prefix
        assert {r for r, _ in got} == {home}
        reused += [n for _, n in got]
    full_blocks = 512 // block
    hit_rate = sum(reused) / (full_blocks * len(reused))
    print(f"prefix KV hit rate of the follow-up requests: {hit_rate:.2f} "
          f"({sum(reused)} of {full_blocks * len(reused)} prefix blocks reused)")
    assert hit_rate >= 0.9
    # the replicas' own statistics count the requests too
    after = {r: int(_stats(served, r, "tensorrt_llm")["inference_count"]) for r in replicas}
    assert sum(after.values()) - sum(before.values()) == 2 * per_group


def test_errors_keep_the_single_process_shape(served):
    url = f"http://{served.http_url}"
    r = httpx.post(f"{url}/v1/completions", json={"model": "nope", "prompt": "hi"}, timeout=30)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found"
    r = httpx.post(f"{url}/v2/models/nope/generate", json={"text_input": "hi"}, timeout=30)
    assert r.status_code == 400 and "unknown model: 'nope'" in r.json()["error"]
    r = httpx.post(f"{url}/v2/models/ensemble/generate", content=b"{not json", timeout=30)
    assert r.status_code == 400 and "error" in r.json()
    c = th.InferenceServerClient(served.http_url)
    try:
        assert c.is_server_ready() and c.is_model_ready("ensemble")
        with pytest.raises(th.InferenceServerException, match="unknown model"):
            c.get_model_metadata("nope")
    finally:
        c.close()


def _completion(served, i: int, stream: bool, heads: queue.Queue | None = None,
                tokens: int = 600) -> tuple[str, int, str]:
    """(replica, status, what came back) of one long completion; a stream's replica goes
    to heads as soon as its first chunk arrives."""
    body = {"model": "ensemble", "prompt": f"long request {i}", "max_tokens": tokens,
            "min_tokens": tokens, "stream": stream}
    with httpx.stream("POST", f"http://{served.http_url}/v1/completions", json=body,
                      timeout=httpx.Timeout(120)) as r:
        replica = r.headers.get(REPLICA, "")
        if heads is not None and stream:
            heads.put(replica)
        text = r.read().decode("utf-8", errors="replace")
        return replica, r.status_code, text


def test_replica_killed_mid_load_fails_its_requests_with_503_and_is_replaced(served):
    import ray

    _replicas(served)
    heads: queue.Queue = queue.Queue()
    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(_completion, served, i, i % 2 == 0, heads) for i in range(12)]
        # the first stream that begins is generating on its replica: kill that one now
        victim = heads.get(timeout=120)
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        killed_at = time.monotonic()
        results = [f.result(timeout=120) for f in futures]  # none hangs
    assert time.monotonic() - killed_at < 90
    lost = []
    for replica, status, text in results:
        if status == 503:  # refused before its response began: the JSON error
            error = json.loads(text)["error"]
            assert error["code"] == "service_unavailable"
            assert "replica serving this request died" in error["message"]
            lost.append(replica)
        elif "replica serving this request died" in text:  # a stream cut mid-way
            assert status == 200 and replica == victim
            lost.append(replica)
        else:
            assert status == 200 and text, (status, text)
            assert replica != victim or "[DONE]" in text or '"length"' in text
    print(f"{len(lost)} of {len(results)} in-flight requests were on the killed replica")
    assert lost, "no request was in flight on the killed replica"
    # new requests go to the surviving replica
    for i in range(6):
        replica, status, _ = _completion(served, 100 + i, False, tokens=8)
        assert status == 200 and replica != victim
    # Ray starts a replacement (the controller may still count the dead one as running
    # for a while: the proof is a second live replica answering)
    deadline = time.monotonic() + 180
    seen: set[str] = set()
    while len(seen) < 2 and time.monotonic() < deadline:
        r = httpx.get(f"http://{served.http_url}/v2/health/ready", timeout=10)
        assert r.status_code == 200
        seen.add(r.headers[REPLICA])
        time.sleep(0.2)
    assert len(seen) == 2 and victim not in seen, seen
