"""Faults injected into a running server: an exception in one engine step fails the
requests that step ran (a 500 each) while a queued request and later ones are served;
an exception while the tensorrt_llm backend handles one request's response fails that
request alone, instead of leaving it waiting forever. The server stays healthy."""

from __future__ import annotations

import asyncio
import json

import httpx
from reliability_server import ENGINE_BATCH

TRTLLM = "/v2/models/tensorrt_llm/generate"
STREAM = "/v2/models/tensorrt_llm/generate_stream"


def _body(tokens: int, rid: str = "", stream: bool = False) -> dict:
    body = {"input_ids": [5, 40, 77, 123, 9], "input_lengths": 5, "request_output_len": tokens,
            "end_id": -1, "streaming": stream}
    if rid:
        body["id"] = rid
    return body


async def _first_then_rest(client: httpx.AsyncClient, started: asyncio.Event,
                           running: list) -> list[dict]:
    """A stream: report its first event, then read the rest."""
    events = []
    async with client.stream("POST", STREAM, json=_body(200, stream=True)) as r:
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
                if len(events) == 1:
                    running.append(1)
                    if len(running) == ENGINE_BATCH:
                        started.set()
    return events


def test_engine_step_fault_fails_only_the_running_requests(llm):
    runner = llm.executor()._stepper.runner
    forward = runner.forward
    armed = {"left": 0}

    def faulty(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if armed["left"]:
            armed["left"] -= 1
            raise RuntimeError("injected engine fault")
        return forward(*args, **kwargs)

    async def scenario() -> tuple[list, httpx.Response, httpx.Response]:
        started, running = asyncio.Event(), []
        async with httpx.AsyncClient(base_url=llm.url, timeout=60) as client:
            streams = [asyncio.ensure_future(_first_then_rest(client, started, running))
                       for _ in range(ENGINE_BATCH)]
            await asyncio.wait_for(started.wait(), 60)
            queued = asyncio.ensure_future(client.post(TRTLLM, json=_body(8)))
            await asyncio.sleep(0.05)  # in the executor's queue behind the full batch
            armed["left"] = 1
            results = await asyncio.gather(*streams)
            after = await client.post(TRTLLM, json=_body(8))
            return results, await queued, after

    runner.forward = faulty
    try:
        streams, queued, after = asyncio.run(scenario())
    finally:
        runner.forward = forward
    for events in streams:  # each ran in the failed step: its stream ends with the error
        assert "injected engine fault" in events[-1].get("error", ""), events[-1]
    assert queued.status_code == 200 and len(queued.json()["output_ids"]) == 8, queued.text
    assert after.status_code == 200, after.text
    _, held = llm.wait_idle(within=2.0)
    assert not any(held.values()), held


def test_backend_fault_fails_only_its_request(llm):
    model = llm.server.models.resolve("tensorrt_llm")._backend_model.model
    send = model._send_stream

    def faulty(item, result, last):  # noqa: ANN001, ANN202
        if item.group.sched.request.id == "faulty":
            raise RuntimeError("injected backend fault")
        return send(item, result, last)

    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=llm.url, timeout=60) as client:
            return await asyncio.gather(*(client.post(TRTLLM, json=_body(6, rid))
                                          for rid in ("ok-1", "faulty", "ok-2")))

    model._send_stream = faulty
    try:
        ok1, bad, ok2 = asyncio.run(scenario())
    finally:
        model._send_stream = send
    assert bad.status_code == 500 and "injected backend fault" in bad.json()["error"], bad.text
    for ok in (ok1, ok2):
        assert ok.status_code == 200 and len(ok.json()["output_ids"]) == 6, ok.text
    _, held = llm.wait_idle(within=2.0)
    assert not any(held.values()), held
    assert httpx.get(f"{llm.url}/v2/health/ready").status_code == 200
