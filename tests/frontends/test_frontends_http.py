"""KServe v2 HTTP over real sockets with tritonclient.http (sync + aio) and httpx."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import struct

import httpx
import numpy as np
import pytest
import tritonclient.http as th
import tritonclient.http.aio as tha
from tritonclient.utils import InferenceServerException


@pytest.fixture(scope="module")
def client(running):
    c = th.InferenceServerClient(running.http_url)
    yield c
    c.close()


@pytest.fixture(scope="module")
def http(running):
    with httpx.Client(base_url=f"http://{running.http_url}", timeout=10) as c:
        yield c


def simple_inputs(binary=True, batch=1):
    a = np.arange(16 * batch, dtype=np.int32).reshape(batch, 16)
    b = np.ones((batch, 16), dtype=np.int32)
    i0 = th.InferInput("INPUT0", [batch, 16], "INT32")
    i0.set_data_from_numpy(a, binary_data=binary)
    i1 = th.InferInput("INPUT1", [batch, 16], "INT32")
    i1.set_data_from_numpy(b, binary_data=binary)
    return a, b, [i0, i1]


def identity(client, array, datatype, binary_in, binary_out, **kw):
    inp = th.InferInput("INPUT0", list(array.shape), datatype)
    inp.set_data_from_numpy(array, binary_data=binary_in)
    out = th.InferRequestedOutput("OUTPUT0", binary_data=binary_out)
    return client.infer("identity", [inp], outputs=[out], **kw)


def test_health_and_metadata(client, http, running):
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata()["name"] == "llmserve"
    meta = client.get_model_metadata("simple")
    assert meta["inputs"][0] == {"name": "INPUT0", "datatype": "INT32", "shape": [-1, 16]}
    assert client.get_model_metadata("simple", "1")["name"] == "simple"
    assert client.is_model_ready("simple") and client.is_model_ready("simple", "1")
    assert not client.is_model_ready("simple", "7")
    assert not client.is_model_ready("nope")
    assert not client.is_model_ready("simple", "x")
    cfg = client.get_model_config("simple")
    assert cfg["max_batch_size"] == 8 and cfg["input"][0]["dims"] == [16]
    running.fake.server_ready = False
    try:
        r = http.get("/v2/health/ready")
        assert r.status_code == 400 and r.content == b""
        assert not client.is_server_ready()
    finally:
        running.fake.server_ready = True
    assert http.get("/v2/health/live").status_code == 200


@pytest.mark.parametrize("binary", [True, False])
def test_infer_simple(client, binary):
    a, b, inputs = simple_inputs(binary=binary, batch=2)
    outputs = [th.InferRequestedOutput("OUTPUT0", binary_data=binary),
               th.InferRequestedOutput("OUTPUT1", binary_data=not binary)]
    res = client.infer("simple", inputs, outputs=outputs, request_id="r-1")
    np.testing.assert_array_equal(res.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(res.as_numpy("OUTPUT1"), a - b)
    body = res.get_response()
    assert body["id"] == "r-1" and body["model_name"] == "simple" and body["model_version"] == "1"


def test_infer_default_outputs_are_binary_and_requested_subset(client):
    a, b, inputs = simple_inputs()
    res = client.infer("simple", inputs)  # no outputs: binary_data_output=true
    assert all("binary_data_size" in o["parameters"] for o in res.get_response()["outputs"])
    np.testing.assert_array_equal(res.as_numpy("OUTPUT1"), a - b)
    res = client.infer("simple", inputs, outputs=[th.InferRequestedOutput("OUTPUT1")])
    assert [o["name"] for o in res.get_response()["outputs"]] == ["OUTPUT1"]


def test_infer_versioned_and_parameters(client, running):
    a, b, inputs = simple_inputs()
    res = client.infer("simple", inputs, model_version="1", sequence_id=42, sequence_start=True,
                       priority=2, timeout=5000, parameters={"temperature": 0.5, "tag": "x"})
    req = running.fake.last_request
    assert req.correlation_id == 42 and req.flags == 1 and req.priority == 2
    assert req.timeout_us == 5000
    assert req.parameters == {"temperature": 0.5, "tag": "x"}
    assert res.get_response()["parameters"] == {"temperature": 0.5, "tag": "x"}


@pytest.mark.parametrize("binary_in,binary_out", [(True, True), (False, False), (True, False)])
@pytest.mark.parametrize(
    "array,datatype",
    [
        (np.array([b"hello", b"", "w\u00f6rld".encode()], dtype=np.object_), "BYTES"),
        (np.array([[1.5, -2.25], [3.0, 0.0]], dtype=np.float16), "FP16"),
        (np.array([True, False, True]), "BOOL"),
        (np.array([2**40, -7], dtype=np.int64), "INT64"),
        (np.array([2**63 + 5, 1], dtype=np.uint64), "UINT64"),
        (np.array([0.1, 1e300], dtype=np.float64), "FP64"),
        (np.array([[1, -2, 3]], dtype=np.int8), "INT8"),
    ],
)
def test_identity_roundtrip(client, array, datatype, binary_in, binary_out):
    res = identity(client, array, datatype, binary_in, binary_out)
    out = res.as_numpy("OUTPUT0")
    assert out.shape == array.shape
    if datatype == "BYTES":
        assert [bytes(x) if not isinstance(x, str) else x.encode() for x in out.reshape(-1)] == list(
            array.reshape(-1)
        )
    else:
        np.testing.assert_array_equal(out, array)


def test_bf16_binary_roundtrip(http):
    values = np.array([1.0, -2.5, 3.140625], dtype=np.float32)
    raw = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    header = json.dumps({
        "inputs": [{"name": "INPUT0", "datatype": "BF16", "shape": [3],
                    "parameters": {"binary_data_size": len(raw)}}],
        "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}],
    }).encode()
    r = http.post("/v2/models/identity/infer", content=header + raw,
                  headers={"Inference-Header-Content-Length": str(len(header))})
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    doc = json.loads(r.content[:n])
    assert doc["outputs"][0]["datatype"] == "BF16"
    assert r.content[n:] == raw
    # JSON in, JSON out
    r = http.post("/v2/models/identity/infer", json={
        "inputs": [{"name": "INPUT0", "datatype": "BF16", "shape": [3], "data": values.tolist()}]})
    assert r.json()["outputs"][0]["data"] == values.tolist()


def test_classification(client):
    arr = np.array([0.1, 0.7, 0.2, 0.05], dtype=np.float32)
    inp = th.InferInput("INPUT0", [4], "FP32")
    inp.set_data_from_numpy(arr)
    res = client.infer("identity", [inp], outputs=[th.InferRequestedOutput("OUTPUT0", class_count=2)])
    out = [x.decode() if isinstance(x, bytes) else x for x in res.as_numpy("OUTPUT0")]
    assert out == ["0.700000:1", "0.200000:2"]


def test_nested_json_data_and_gzip(http):
    doc = {"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [2, 2],
                       "data": [[1, 2], [3, 4]]}]}
    r = http.post("/v2/models/identity/infer", json=doc)
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [1, 2, 3, 4]
    r = http.post("/v2/models/identity/infer", content=gzip.compress(json.dumps(doc).encode()),
                  headers={"Content-Encoding": "gzip"})
    assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [2, 2]


def test_compressed_client(running):
    c = th.InferenceServerClient(running.http_url)
    try:
        a, b, inputs = simple_inputs()
        for algo in ("gzip", "deflate"):
            res = c.infer("simple", inputs, request_compression_algorithm=algo)
            np.testing.assert_array_equal(res.as_numpy("OUTPUT0"), a + b)
    finally:
        c.close()


def expect_error(http, path, body, status, fragment, **kw):
    if isinstance(body, (dict, list)):
        r = http.post(path, json=body, **kw)
    else:
        r = http.post(path, content=body, **kw)
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert fragment in err, err
    return err


def test_infer_errors(http, client):
    ok_input = {"name": "INPUT0", "datatype": "INT32", "shape": [1], "data": [1]}
    expect_error(http, "/v2/models/nope/infer", {"inputs": [ok_input]}, 400,
                 "Request for unknown model: 'nope' is not found")
    expect_error(http, "/v2/models/unready/infer", {"inputs": [ok_input]}, 404,
                 "has no available versions")
    expect_error(http, "/v2/models/simple/versions/3/infer", {"inputs": [ok_input]}, 503,
                 "is not at ready state")
    expect_error(http, "/v2/models/simple/versions/abc/infer", {"inputs": []}, 400, "version")
    expect_error(http, "/v2/models/full/infer", {"inputs": [ok_input]}, 503,
                 "Exceeds maximum queue size")
    expect_error(http, "/v2/models/failing/infer", {"inputs": [ok_input]}, 500, "model failed")
    expect_error(http, "/v2/models/repeat/infer", {"inputs": []}, 501,
                 "HTTP end point doesn't support models with decoupled transaction policy")
    _, _, inputs = simple_inputs()
    bad = th.InferInput("INPUT1", [1, 8], "INT32")
    bad.set_data_from_numpy(np.zeros((1, 8), np.int32))
    with pytest.raises(InferenceServerException, match="unexpected shape"):
        client.infer("simple", [inputs[0], bad])
    with pytest.raises(InferenceServerException, match="missing required input 'INPUT1'"):
        client.infer("simple", [inputs[0]])
    wrong = th.InferInput("INPUT1", [1, 16], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 16), np.float32))
    with pytest.raises(InferenceServerException, match="data-type"):
        client.infer("simple", [inputs[0], wrong])


@pytest.mark.parametrize(
    "body,fragment",
    [
        (b"{not json", "failed to parse"),
        (b"[1, 2]", "JSON object"),
        (b"[" * 100000, "failed to parse"),
        ({"inputs": "x"}, "'inputs'"),
        ({"inputs": [{"name": "INPUT0", "datatype": "INT33", "shape": [1], "data": [1]}]},
         "datatype"),
        ({"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [2], "data": [1]}]},
         "do not match shape"),
        ({"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [-1], "data": [1]}]},
         "negative"),
        ({"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": "1", "data": [1]}]},
         "list of integers"),
        ({"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1], "data": ["a"]}]},
         "not of type INT32"),
        ({"inputs": [{"name": "INPUT0", "datatype": "INT8", "shape": [1], "data": [300]}]},
         "out of range"),
        ({"inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [1], "data": [1]}]},
         "expects strings"),
        ({"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1]}]}, "neither"),
        ({"inputs": [{"datatype": "INT32", "shape": [1], "data": [1]}]}, "name"),
        ({"id": 5, "inputs": []}, "'id'"),
        ({"parameters": {"priority": -1}, "inputs": []}, "priority"),
        ({"parameters": {"x": [1]}, "inputs": []}, "parameter 'x'"),
        ({"inputs": [], "outputs": [{"name": "O", "parameters": {"binary_data": 1}}]},
         "binary_data"),
    ],
)
def test_malformed_requests(http, body, fragment):
    expect_error(http, "/v2/models/identity/infer", body, 400, fragment)


def test_binary_errors(http, client):
    header = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [4],
                                     "parameters": {"binary_data_size": 16}}]}).encode()
    path = "/v2/models/identity/infer"
    hdr = {"Inference-Header-Content-Length": str(len(header))}
    expect_error(http, path, header + b"\0" * 8, 400, "remain", headers=hdr)  # truncated
    expect_error(http, path, header + b"\0" * 20, 400, "additional binary data", headers=hdr)
    expect_error(http, path, header, 400, "outside the body",
                 headers={"Inference-Header-Content-Length": str(len(header) + 9)})
    expect_error(http, path, header, 400, "Inference-Header-Content-Length",
                 headers={"Inference-Header-Content-Length": "x"})
    bad_size = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [4],
                                       "parameters": {"binary_data_size": 8}}]}).encode()
    expect_error(http, path, bad_size + b"\0" * 8, 400, "unexpected total byte size",
                 headers={"Inference-Header-Content-Length": str(len(bad_size))})
    strings = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [1],
                                      "parameters": {"binary_data_size": 6}}]}).encode()
    expect_error(http, path, strings + struct.pack("<I", 9) + b"ab", 400, "BYTES",
                 headers={"Inference-Header-Content-Length": str(len(strings))})
    expect_error(http, path, b"xx", 400, "Content-Encoding",
                 headers={"Content-Encoding": "br"})
    expect_error(http, path, b"xx", 400, "decompress", headers={"Content-Encoding": "gzip"})
    # and the server keeps serving
    a, b, inputs = simple_inputs()
    np.testing.assert_array_equal(client.infer("simple", inputs).as_numpy("OUTPUT0"), a + b)


def test_request_body_limit(running):
    from frontends_double import Running

    from llmserve.options import ServerOptions

    small = Running(ServerOptions(http_address="127.0.0.1", http_port=0, allow_grpc=False,
                                  allow_metrics=False, http_max_body_bytes=1000))
    try:
        url = f"http://{small.http_url}/v2/models/identity/infer"
        big = b'{"inputs": []}' + b" " * 2000
        r = httpx.post(url, content=big)
        assert r.status_code == 413 and "limit of 1000" in r.json()["error"]

        def chunks():
            for _ in range(50):
                yield b" " * 100
        r = httpx.post(url, content=chunks())  # chunked: no Content-Length
        assert r.status_code == 413
        small_gz = gzip.compress(b'{"inputs": []}' + b" " * 5000)
        r = httpx.post(url, content=small_gz, headers={"Content-Encoding": "gzip"})
        assert r.status_code == 413
        r = httpx.post(url, json={"inputs": [{"name": "INPUT0", "datatype": "INT32",
                                              "shape": [1], "data": [3]}]})
        assert r.status_code == 200
    finally:
        small.stop()


def test_unsupported_extensions(client, http):
    for fn in (client.get_system_shared_memory_status, client.get_cuda_shared_memory_status,
               client.get_trace_settings, client.get_log_settings):
        with pytest.raises(InferenceServerException, match="not supported") as info:
            fn()
        assert info.value.status() == "501"
    assert http.post("/v2/systemsharedmemory/region/r/register", json={}).status_code == 501


def test_unknown_route_and_method(http):
    r = http.get("/v2/nothing/here")
    assert r.status_code == 404 and "error" in r.json()
    assert http.delete("/v2/models/simple").status_code == 405


def test_repository_and_stats(client, http, running):
    index = client.get_model_repository_index()
    assert {"name": "unready", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"} in index
    ready = http.post("/v2/repository/index", json={"ready": True}).json()
    assert all(m["state"] == "READY" for m in ready)
    client.load_model("unready", config='{"max_batch_size": 0}',
                      files={"file:1/model.py": b"print('x')"})
    assert running.fake.loads[-1] == ("unready", '{"max_batch_size": 0}',
                                      {"file:1/model.py": b"print('x')"})
    assert client.is_model_ready("unready")
    client.unload_model("unready", unload_dependents=True)
    assert running.fake.unloads[-1] == ("unready", True)
    assert not client.is_model_ready("unready")
    with pytest.raises(InferenceServerException, match="failed to poll"):
        client.load_model("nope")
    expect_error(http, "/v2/repository/models/simple/load",
                 {"parameters": {"file:1/model.py": "%%%"}}, 400, "base64")
    expect_error(http, "/v2/repository/index", {"ready": "yes"}, 400, "boolean")
    stats = client.get_inference_statistics("simple")
    assert stats["model_stats"][0]["inference_stats"]["success"] == {"count": 0, "ns": 0}
    assert len(client.get_inference_statistics()["model_stats"]) >= 2
    assert http.get("/v2/models/simple/versions/1/stats").status_code == 200
    assert http.get("/v2/models/nope/stats").status_code == 400


def test_disconnect_cancels_request(running):
    body = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1],
                                   "data": [1]}]}).encode()
    started, cancelled = running.fake.fresh_events("slow")
    with socket.create_connection(("127.0.0.1", running.frontends.http_port)) as s:
        s.sendall(b"POST /v2/models/slow/infer HTTP/1.1\r\nHost: x\r\nContent-Type: "
                  b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        assert started.wait(5)
    assert cancelled.wait(5)


def test_aio_client(running):
    async def main():
        c = tha.InferenceServerClient(running.http_url)
        try:
            assert await c.is_server_live()
            a, b, inputs = simple_inputs()
            results = await asyncio.gather(*[c.infer("simple", inputs) for _ in range(8)])
            for res in results:
                np.testing.assert_array_equal(res.as_numpy("OUTPUT0"), a + b)
            with pytest.raises(InferenceServerException, match="not found"):
                await c.infer("nope", inputs)
            assert (await c.get_model_metadata("simple"))["name"] == "simple"
        finally:
            await c.close()

    asyncio.run(main())


FUZZ_PATHS = [
    "/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/simple", "/v2/models/simple/ready",
    "/v2/models/simple/config", "/v2/models/simple/infer", "/v2/models/simple/versions/1/infer",
    "/v2/models/identity/infer", "/v2/models/gen/generate", "/v2/models/gen_stream/generate_stream",
    "/v2/models/stats", "/v2/models/simple/stats", "/v2/repository/index",
    "/v2/repository/models/simple/load", "/v2/repository/models/simple/unload",
    "/v2/models/%00/infer", "/v2/models/../../etc/passwd", "/v2/models/simple/versions/-1",
    "/v2/models/" + "a" * 3000,
]


def test_fuzz_requests_never_500(running, client):
    import random

    rng = random.Random(1234)
    port = running.frontends.http_port
    junk = [b"", b"{", b"null", b"[]", b'{"inputs": [null]}', b'{"inputs": [{"name": 1}]}',
            bytes(rng.randrange(256) for _ in range(64)), b'{"text_input": null}',
            b'{"inputs":[{"name":"INPUT0","datatype":"BYTES","shape":[1],"data":[[[]]]}]}']
    for path in FUZZ_PATHS:
        for method in ("GET", "POST"):
            body = rng.choice(junk)
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as h:
                r = h.request(method, path, content=body)
            assert r.status_code < 500 or r.status_code in (501, 503), (method, path, r.text)
            if r.status_code >= 400 and r.content:
                assert "error" in r.json()
    # raw garbage on the socket
    for garbage in (b"\x00\xff\r\n\r\n", b"POST /v2/models/simple/infer HTTP/1.1\r\n"
                    b"Content-Length: 99999999999999999999\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.settimeout(5)
            s.sendall(garbage)
            try:
                s.recv(1024)
            except (TimeoutError, ConnectionResetError):
                pass
    a, b, inputs = simple_inputs()
    np.testing.assert_array_equal(client.infer("simple", inputs).as_numpy("OUTPUT0"), a + b)
