"""End to end: real InferenceServer + Python models (tests/e2e/models) behind the real
frontends, driven by tritonclient.http / tritonclient.grpc / httpx over real sockets."""

from __future__ import annotations

import json
import queue
import socket
import time

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from tritonclient.utils import InferenceServerException


@pytest.fixture(scope="module")
def hc(live):
    c = th.InferenceServerClient(live.http_url)
    yield c
    c.close()


@pytest.fixture(scope="module")
def gc(live):
    c = tg.InferenceServerClient(live.grpc_url)
    yield c
    c.close()


def add_sub_inputs(mod, binary=True):
    a = np.array([[1, 2, 3, 4]], dtype=np.float32)
    b = np.array([[0.5, 0.5, 1, 1]], dtype=np.float32)
    inputs = [mod.InferInput("INPUT0", [1, 4], "FP32"), mod.InferInput("INPUT1", [1, 4], "FP32")]
    if mod is th:
        inputs[0].set_data_from_numpy(a, binary_data=binary)
        inputs[1].set_data_from_numpy(b, binary_data=binary)
    else:
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(b)
    return a, b, inputs


def test_http_infer_and_metadata(live, hc):
    assert hc.is_server_live() and hc.is_server_ready()
    assert hc.is_model_ready("e2e_add_sub")
    meta = hc.get_model_metadata("e2e_add_sub")
    assert meta["inputs"][0]["shape"] == [-1, 4] and meta["inputs"][0]["datatype"] == "FP32"
    assert hc.get_model_config("e2e_add_sub")["max_batch_size"] == 8
    for binary in (True, False):
        a, b, inputs = add_sub_inputs(th, binary)
        outputs = [th.InferRequestedOutput("OUTPUT0", binary_data=binary),
                   th.InferRequestedOutput("OUTPUT1", binary_data=binary)]
        res = hc.infer("e2e_add_sub", inputs, outputs=outputs, request_id="e1")
        np.testing.assert_allclose(res.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_allclose(res.as_numpy("OUTPUT1"), a - b)
        assert res.get_response()["id"] == "e1"
    index = hc.get_model_repository_index()
    assert {m["name"] for m in index if m["state"] == "READY"} >= {"e2e_add_sub", "e2e_repeat"}
    stats = hc.get_inference_statistics("e2e_add_sub")["model_stats"][0]
    assert stats["inference_stats"]["success"]["count"] >= 2


def test_http_errors(hc):
    _, _, inputs = add_sub_inputs(th)
    with pytest.raises(InferenceServerException) as info:
        hc.infer("e2e_repeat", inputs)
    assert info.value.status() == "501" and "decoupled" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        hc.infer("no_such_model", inputs)
    assert info.value.status() == "400" and "unknown model" in info.value.message()
    bad = th.InferInput("INPUT1", [1, 3], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3), np.float32))
    with pytest.raises(InferenceServerException) as info:
        hc.infer("e2e_add_sub", [inputs[0], bad])
    assert info.value.status() == "400"
    with pytest.raises(InferenceServerException) as info:
        hc.infer("e2e_add_sub", [inputs[0]])
    assert info.value.status() == "400"


@pytest.mark.parametrize("code,status,grpc_code", [
    ("INVALID_ARG", "400", "INVALID_ARGUMENT"), ("NOT_FOUND", "404", "NOT_FOUND"),
    ("UNAVAILABLE", "503", "UNAVAILABLE"), ("UNSUPPORTED", "501", "UNIMPLEMENTED"),
    ("INTERNAL", "500", "INTERNAL"), ("raise", "500", "INTERNAL"),
])
def test_model_error_codes(hc, gc, code, status, grpc_code):
    arr = np.array([code.encode()], dtype=np.object_)
    hin = th.InferInput("CODE", [1], "BYTES")
    hin.set_data_from_numpy(arr)
    with pytest.raises(InferenceServerException) as info:
        hc.infer("e2e_error", [hin])
    assert info.value.status() == status
    gin = tg.InferInput("CODE", [1], "BYTES")
    gin.set_data_from_numpy(arr)
    with pytest.raises(InferenceServerException) as info:
        gc.infer("e2e_error", [gin])
    assert info.value.status() == f"StatusCode.{grpc_code}"


def test_grpc_infer_and_decoupled_refused(gc):
    a, b, inputs = add_sub_inputs(tg)
    res = gc.infer("e2e_add_sub", inputs)
    np.testing.assert_allclose(res.as_numpy("OUTPUT0"), a + b)
    rin = tg.InferInput("IN", [2], "INT32")
    rin.set_data_from_numpy(np.array([1, 2], dtype=np.int32))
    with pytest.raises(InferenceServerException) as info:
        gc.infer("e2e_repeat", [rin])
    assert info.value.status() == "StatusCode.UNIMPLEMENTED"
    assert gc.get_model_config("e2e_repeat").config.model_transaction_policy.decoupled


def _stream(live, sends, count, headers=None, timeout=20):
    q: queue.Queue = queue.Queue()
    c = tg.InferenceServerClient(live.grpc_url)
    c.start_stream(callback=lambda result, error: q.put((result, error)), headers=headers)
    try:
        for kwargs in sends:
            c.async_stream_infer(**kwargs)
        return [q.get(timeout=timeout) for _ in range(count)]
    finally:
        c.stop_stream()
        c.close()


def _repeat(values):
    rin = tg.InferInput("IN", [len(values)], "INT32")
    rin.set_data_from_numpy(np.array(values, dtype=np.int32))
    return [rin]


def test_grpc_stream_decoupled(live):
    items = _stream(live, [
        dict(model_name="e2e_repeat", inputs=_repeat([5, 6, 7]), request_id="a"),
        dict(model_name="e2e_repeat", inputs=_repeat([9]), request_id="b",
             enable_empty_final_response=True),
        dict(model_name="e2e_add_sub", inputs=add_sub_inputs(tg)[2], request_id="c"),
    ], count=6)
    assert all(err is None for _, err in items), items
    by_id: dict = {}
    for res, _ in items:
        r = res.get_response()
        out = res.as_numpy("OUT")
        by_id.setdefault(r.id, []).append(
            (None if out is None else int(out[0]), r.parameters["triton_final_response"].bool_param))
    assert by_id["a"] == [(5, False), (6, False), (7, False)]
    assert by_id["b"] == [(9, False), (None, True)]
    assert [f for _, f in by_id["c"]] == [True]


def test_grpc_stream_errors(live):
    bad = tg.InferInput("IN", [1], "FP32")
    bad.set_data_from_numpy(np.array([1], dtype=np.float32))
    items = _stream(live, [
        dict(model_name="e2e_repeat", inputs=[bad]),
        dict(model_name="e2e_repeat", inputs=_repeat([3])),
    ], count=2)
    assert sum(err is not None for _, err in items) == 1
    assert [int(r.as_numpy("OUT")[0]) for r, e in items if e is None] == [3]
    (res, err), = _stream(live, [dict(model_name="e2e_repeat", inputs=[bad])], count=1,
                          headers={"triton_grpc_error": "true"})
    assert res is None and err.status() == "StatusCode.INVALID_ARGUMENT"


def test_generate(live):
    url = f"http://{live.http_url}/v2/models"
    r = httpx.post(f"{url}/e2e_text/generate",
                   json={"text_input": "hey", "max_tokens": 2, "parameters": {"suffix": "!"}})
    assert r.status_code == 200, r.text
    assert r.json() == {"model_name": "e2e_text", "model_version": "1",
                        "text_output": "hey hey!", "tokens": 2}
    r = httpx.post(f"{url}/e2e_text_stream/generate_stream",
                   json={"text_input": "w", "max_tokens": 3}, timeout=20)
    assert r.status_code == 200
    events = [json.loads(line[6:]) for line in r.text.split("\n\n") if line]
    assert [e["text_output"] for e in events] == ["w 0", "w 1", "w 2"]
    r = httpx.post(f"{url}/e2e_text_stream/generate_stream",
                   json={"text_input": "fail", "max_tokens": 3}, timeout=20)
    events = [json.loads(line[6:]) for line in r.text.split("\n\n") if line]
    assert events[0]["text_output"] == "fail 0" and "stream failed at 1" in events[1]["error"]
    r = httpx.post(f"{url}/e2e_text/generate", json={"text_input": "x"})
    assert r.status_code == 400


def _wait_file(path, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        time.sleep(0.05)
    return None


def test_generate_stream_disconnect_cancels(live, tmp_path):
    marker = tmp_path / "http.txt"
    body = json.dumps({"MARKER": str(marker)}).encode()
    with socket.create_connection(("127.0.0.1", live.frontends.http_port)) as s:
        s.sendall(b"POST /v2/models/e2e_cancel/generate_stream HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        s.settimeout(15)
        data = b""
        while b"data: " not in data:
            data += s.recv(4096)
    assert _wait_file(marker) == "cancelled"


def test_grpc_stream_cancel(live, tmp_path):
    marker = tmp_path / "grpc.txt"
    q: queue.Queue = queue.Queue()
    c = tg.InferenceServerClient(live.grpc_url)
    c.start_stream(callback=lambda result, error: q.put((result, error)))
    try:
        m = tg.InferInput("MARKER", [1], "BYTES")
        m.set_data_from_numpy(np.array([str(marker).encode()], dtype=np.object_))
        c.async_stream_infer("e2e_cancel", [m])
        q.get(timeout=15)
    finally:
        c.stop_stream(cancel_requests=True)
        c.close()
    assert _wait_file(marker) == "cancelled"


def test_metrics_and_still_serving(live, hc):
    for _ in range(3):
        httpx.post(f"http://{live.http_url}/v2/models/e2e_add_sub/infer", content=b"{oops")
    a, b, inputs = add_sub_inputs(th)
    np.testing.assert_allclose(hc.infer("e2e_add_sub", inputs).as_numpy("OUTPUT0"), a + b)
    text = httpx.get(live.metrics_url).text
    assert 'nv_inference_request_success{model="e2e_add_sub",version="1"}' in text
