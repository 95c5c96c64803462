"""Disconnect storm: 320 streams (generate_stream, OpenAI completions and chat, gRPC
ModelStreamInfer, some on LoRA task 7) dropped by the client at random points, eight
at a time. Within 2 s of the last drop the executor holds no KV block, LoRA pin, queue
slot or request, and the active-request and used-KV-block gauges read 0."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter

import grpc
import httpx
from reliability_server import LORA_TASK
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

STREAMS = 320
CONCURRENCY = 8
MAX_TOKENS = 64  # far more than a stream lives: every drop is mid-generation
PROMPTS = ["Once upon a time", "The server answers requests", "Paged attention keeps keys"]


def _http_stream(rng: random.Random) -> tuple[str, dict]:
    prompt = rng.choice(PROMPTS)
    kind = rng.randrange(4)
    if kind == 0:
        return "/v1/completions", {"model": "ensemble", "prompt": prompt, "stream": True,
                                   "max_tokens": MAX_TOKENS}
    if kind == 1:
        return "/v1/chat/completions", {"model": "tensorrt_llm_bls", "stream": True,
                                        "max_tokens": MAX_TOKENS,
                                        "messages": [{"role": "user", "content": prompt}]}
    body = {"text_input": prompt, "max_tokens": MAX_TOKENS, "stream": True}
    if kind == 3:
        body["lora_task_id"] = LORA_TASK
    return "/v2/models/ensemble/generate_stream", body


async def _drop_http(client: httpx.AsyncClient, rng: random.Random, outcome: Counter) -> None:
    path, body = _http_stream(rng)
    events = rng.randrange(0, 6)  # 0: before the first event arrives
    try:
        async with client.stream("POST", path, json=body) as response:
            outcome[response.status_code] += 1
            seen = 0
            async for line in response.aiter_lines():
                seen += line.startswith("data:")
                if seen >= events:
                    break  # leaving the block drops the connection mid-stream
    except httpx.HTTPError as exc:
        outcome[type(exc).__name__] += 1


async def _drop_grpc(stub, rng: random.Random, outcome: Counter) -> None:  # noqa: ANN001
    req = pb.ModelInferRequest(model_name="tensorrt_llm_bls", id=str(rng.random()))
    for name, datatype, value in (("text_input", "BYTES", rng.choice(PROMPTS).encode()),
                                  ("max_tokens", "INT32", MAX_TOKENS), ("stream", "BOOL", True)):
        tensor = req.inputs.add(name=name, datatype=datatype, shape=[1, 1])
        if datatype == "BYTES":
            tensor.contents.bytes_contents.append(value)
        elif datatype == "BOOL":
            tensor.contents.bool_contents.append(value)
        else:
            tensor.contents.int_contents.append(value)
    call = stub.ModelStreamInfer(iter([req]))
    wanted, seen = rng.randrange(0, 6), 0
    try:
        async for reply in call:
            outcome[f"grpc error: {reply.error_message[:40]}" if reply.error_message
                    else "grpc"] += 1
            seen += 1
            if seen >= wanted:
                break
    finally:
        call.cancel()


async def _storm(llm) -> Counter:  # noqa: ANN001
    rng = random.Random(16)
    outcome: Counter = Counter()
    gate = asyncio.Semaphore(CONCURRENCY)
    limits = httpx.Limits(max_connections=CONCURRENCY * 2)
    async with httpx.AsyncClient(base_url=llm.url, timeout=60, limits=limits) as client, \
            grpc.aio.insecure_channel(llm.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        async def one(i: int) -> None:
            async with gate:
                if i % 5 == 4:
                    await _drop_grpc(stub, rng, outcome)
                else:
                    await _drop_http(client, rng, outcome)

        await asyncio.gather(*(one(i) for i in range(STREAMS)))
    return outcome


def test_disconnect_storm_leaves_nothing_held(llm):
    greedy = llm.greedy()
    start = time.monotonic()
    outcome = asyncio.run(_storm(llm))
    storm_secs = time.monotonic() - start
    elapsed, held = llm.wait_idle(within=2.0)
    print(f"\ndisconnect storm: {STREAMS} streams dropped in {storm_secs:.1f}s {dict(outcome)};"
          f" idle {elapsed:.2f}s after the last drop: {held}")
    assert sum(outcome.values()) >= STREAMS
    assert not any(held.values()), held
    assert llm.greedy() == greedy
    with httpx.Client(base_url=llm.url) as c:
        assert json.loads(c.get("/v2/models/tensorrt_llm/stats").text)["model_stats"]
