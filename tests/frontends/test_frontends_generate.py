"""The generate extension (/generate, /generate_stream SSE) over real sockets with httpx."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest


@pytest.fixture(scope="module")
def http(running):
    with httpx.Client(base_url=f"http://{running.http_url}", timeout=10) as c:
        yield c


def events(text: str) -> list[dict]:
    assert text.endswith("\n\n")
    chunks = text.split("\n\n")[:-1]
    assert all(c.startswith("data: ") for c in chunks), text
    return [json.loads(c[len("data: "):]) for c in chunks]


def test_generate_maps_inputs_and_parameters(http, running):
    r = http.post("/v2/models/gen/generate",
                  json={"id": "q1", "text_input": "hi", "parameters": {"max_tokens": 1, "temp": 0.3},
                        "stream": False})
    assert r.status_code == 200, r.text
    assert r.json() == {"id": "q1", "model_name": "gen", "model_version": "1",
                        "text_output": "hi 0", "count": 0}
    req = running.fake.last_request
    assert req.inputs["text_input"].shape == [1, 1] and req.inputs["text_input"].datatype == "BYTES"
    assert req.inputs["max_tokens"].data.tolist() == [[1]]
    assert req.parameters == {"temp": 0.3, "stream": False}
    r = http.post("/v2/models/gen/versions/1/generate", json={"text_input": "a", "max_tokens": [1]})
    assert r.json()["text_output"] == "a 0" and "id" not in r.json()


def test_generate_non_scalar_output(http):
    r = http.post("/v2/models/identity/generate", json={"INPUT0": ["x", "yz"]})
    assert r.status_code == 200 and r.json()["OUTPUT0"] == ["x", "yz"]


def test_generate_decoupled_single_response_ok(http):
    r = http.post("/v2/models/gen_stream/generate", json={"text_input": "s", "max_tokens": 1})
    assert r.status_code == 200 and r.json()["text_output"] == "s 0"
    r = http.post("/v2/models/gen_stream/generate", json={"text_input": "s", "max_tokens": 3})
    assert r.status_code == 400 and "exactly one response" in r.json()["error"]


@pytest.mark.parametrize(
    "path,body,status,fragment",
    [
        ("/v2/models/nope/generate", {"text_input": "a"}, 400, "is not found"),
        ("/v2/models/unready/generate", {"INPUT0": 1}, 404, "no available versions"),
        ("/v2/models/gen/generate", {"text_input": "a"}, 400, "missing required input"),
        ("/v2/models/gen/generate", {"text_input": "a", "max_tokens": "x"}, 400, "INT32"),
        ("/v2/models/gen/generate", {"text_input": "a", "max_tokens": [1, 2]}, 400,
         "expects 1 element"),
        ("/v2/models/gen/generate", {"text_input": "a", "max_tokens": -1}, 501, "negative"),
        ("/v2/models/gen/generate", {"text_input": "a", "max_tokens": 1, "x": {"y": 1}}, 400,
         "parameter 'x'"),
        ("/v2/models/gen/generate", [1], 400, "JSON object"),
        ("/v2/models/gen/generate", "{bad", 400, "failed to parse"),
        ("/v2/models/failing/generate", {"INPUT0": [1]}, 500, "model failed"),
        ("/v2/models/gen/generate_stream", {"text_input": "a"}, 400, "missing required input"),
        ("/v2/models/nope/generate_stream", {"text_input": "a"}, 400, "is not found"),
        ("/v2/models/full/generate_stream", {"INPUT0": 1}, 503, "Exceeds maximum queue size"),
        ("/v2/models/failing/generate_stream", {"INPUT0": [1]}, 500, "model failed"),
    ],
)
def test_generate_errors(http, path, body, status, fragment):
    if isinstance(body, str):
        r = http.post(path, content=body)
    else:
        r = http.post(path, json=body)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]


def test_generate_stream(http):
    r = http.post("/v2/models/gen_stream/generate_stream",
                  json={"id": "s1", "text_input": "tok", "max_tokens": 3})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    evs = events(r.text)
    assert [e["text_output"] for e in evs] == ["tok 0", "tok 1", "tok 2"]
    assert all(e["id"] == "s1" and e["model_name"] == "gen_stream" for e in evs)
    assert "[DONE]" not in r.text
    # a non-decoupled model streams its single response
    r = http.post("/v2/models/gen/generate_stream", json={"text_input": "z", "max_tokens": 1})
    assert [e["count"] for e in events(r.text)] == [0]
    # zero responses (flag-only final): an empty stream
    r = http.post("/v2/models/gen_stream/generate_stream", json={"text_input": "z", "max_tokens": 0})
    assert r.status_code == 200 and r.text == ""


def test_generate_stream_error_after_start(http):
    r = http.post("/v2/models/gen_stream/generate_stream",
                  json={"text_input": "boom", "max_tokens": 3})
    assert r.status_code == 200
    assert events(r.text) == [
        {"model_name": "gen_stream", "model_version": "1", "text_output": "boom 0", "count": 0},
        {"error": "boom at 1"},
    ]


def test_generate_stream_client_closes_early(running):
    started, cancelled = running.fake.fresh_events("slow_stream")
    with httpx.stream("POST", f"http://{running.http_url}/v2/models/slow_stream/generate_stream",
                      json={"INPUT0": [5]}, timeout=10) as r:
        lines = r.iter_lines()
        first = next(lines)
        assert json.loads(first[len("data: "):])["OUTPUT0"] == 5
    # the client closed early: the model saw the cancellation
    assert started.is_set() and cancelled.wait(5)


def test_generate_stream_disconnect_cancels(running):
    started, cancelled = running.fake.fresh_events("slow_stream")
    body = json.dumps({"INPUT0": [1]}).encode()
    with socket.create_connection(("127.0.0.1", running.frontends.http_port)) as s:
        s.sendall(b"POST /v2/models/slow_stream/generate_stream HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        s.settimeout(5)
        data = b""
        while b"data: " not in data:
            data += s.recv(4096)
        assert b"200 OK" in data and started.is_set()
    assert cancelled.wait(5)


def test_generate_disconnect_cancels(running):
    started, cancelled = running.fake.fresh_events("slow")
    body = json.dumps({"INPUT0": [1]}).encode()
    with socket.create_connection(("127.0.0.1", running.frontends.http_port)) as s:
        s.sendall(b"POST /v2/models/slow/generate HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        assert started.wait(5)
    assert cancelled.wait(5)
    # the server still answers
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        r = httpx.post(f"http://{running.http_url}/v2/models/gen/generate",
                       json={"text_input": "ok", "max_tokens": 1})
        if r.status_code == 200:
            break
    assert r.json()["text_output"] == "ok 0"
