"""The serving loop and HTTP parser (frontends/event_loop.py): uvloop and httptools by
default, the standard ones on request, and the frontends answer the same on either."""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
import uvloop
from frontends_double import Running

from llmserve.frontends import event_loop


def test_defaults_are_uvloop_and_httptools(monkeypatch):
    monkeypatch.delenv(event_loop.LOOP_ENV, raising=False)
    monkeypatch.delenv(event_loop.HTTP_ENV, raising=False)
    assert event_loop.loop_factory() is uvloop.new_event_loop
    assert event_loop.http_implementation() == "httptools"


def test_environment_chooses_the_standard_ones(monkeypatch):
    monkeypatch.setenv(event_loop.LOOP_ENV, "asyncio")
    monkeypatch.setenv(event_loop.HTTP_ENV, "h11")
    assert event_loop.loop_factory() is None
    assert event_loop.http_implementation() == "h11"


def test_unknown_choice_warns_and_takes_the_default(monkeypatch, caplog):
    monkeypatch.setenv(event_loop.LOOP_ENV, "trio")
    monkeypatch.setenv(event_loop.HTTP_ENV, "h2")
    with caplog.at_level(logging.WARNING, logger=event_loop.__name__):
        assert event_loop.loop_factory() is uvloop.new_event_loop
        assert event_loop.http_implementation() == "httptools"
    assert "LLMSERVE_EVENT_LOOP='trio'" in caplog.text and "LLMSERVE_HTTP='h2'" in caplog.text


def test_run_uses_the_chosen_loop(monkeypatch):
    async def loop_type():
        return type(asyncio.get_running_loop())

    monkeypatch.setenv(event_loop.LOOP_ENV, "uvloop")
    assert event_loop.run(loop_type()) is uvloop.Loop
    monkeypatch.setenv(event_loop.LOOP_ENV, "asyncio")
    assert event_loop.run(loop_type()) is not uvloop.Loop


@pytest.mark.parametrize("loop,http", [("uvloop", "httptools"), ("asyncio", "h11")])
def test_frontends_serve_on_either(monkeypatch, loop, http):
    """KServe HTTP and gRPC inference, and an SSE stream, on each loop and parser."""
    monkeypatch.setenv(event_loop.HTTP_ENV, http)
    running = Running(loop_factory=uvloop.new_event_loop if loop == "uvloop" else None)
    try:
        assert isinstance(running.loop, uvloop.Loop) == (loop == "uvloop")
        data = np.array([7], dtype=np.int32)
        hc = th.InferenceServerClient(running.http_url)
        gc = tg.InferenceServerClient(running.grpc_url)
        try:
            hi = th.InferInput("INPUT0", [1], "INT32")
            hi.set_data_from_numpy(data)
            assert hc.infer("identity", [hi]).as_numpy("OUTPUT0").tolist() == [7]
            gi = tg.InferInput("INPUT0", [1], "INT32")
            gi.set_data_from_numpy(data)
            assert gc.infer("identity", [gi]).as_numpy("OUTPUT0").tolist() == [7]
        finally:
            hc.close()
            gc.close()
        r = httpx.post(f"http://{running.http_url}/v2/models/gen_stream/generate_stream",
                       json={"text_input": "tok", "max_tokens": 3}, timeout=10)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        chunks = r.text.split("\n\n")[:-1]
        assert [json.loads(c[len("data: "):])["text_output"] for c in chunks] == [
            "tok 0", "tok 1", "tok 2"]
        # a malformed body is answered 400 and the server goes on serving
        r = httpx.post(f"http://{running.http_url}/v2/models/identity/infer",
                       content=b"{not json", timeout=10)
        assert r.status_code == 400
    finally:
        running.stop()
