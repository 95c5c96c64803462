"""KServe v2 gRPC over real sockets with tritonclient.grpc (sync, aio, streaming)."""

from __future__ import annotations

import asyncio
import queue
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.grpc.aio as tga
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException


@pytest.fixture(scope="module")
def client(running):
    c = tg.InferenceServerClient(running.grpc_url)
    yield c
    c.close()


@pytest.fixture(scope="module")
def stub(running):
    channel = grpc.insecure_channel(running.grpc_url)
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def simple_inputs(batch=1):
    a = np.arange(16 * batch, dtype=np.int32).reshape(batch, 16)
    b = np.full((batch, 16), 3, dtype=np.int32)
    i0 = tg.InferInput("INPUT0", [batch, 16], "INT32")
    i0.set_data_from_numpy(a)
    i1 = tg.InferInput("INPUT1", [batch, 16], "INT32")
    i1.set_data_from_numpy(b)
    return a, b, [i0, i1]


def status_of(fn, *args, **kw):
    with pytest.raises(InferenceServerException) as info:
        fn(*args, **kw)
    return info.value.status(), info.value.message()


def test_server_and_model_rpcs(client, running):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta.name == "llmserve" and list(meta.extensions) == ["binary_tensor_data"]
    mm = client.get_model_metadata("simple", as_json=True)
    assert mm["inputs"][0] == {"name": "INPUT0", "datatype": "INT32", "shape": ["-1", "16"]}
    assert client.is_model_ready("simple") and not client.is_model_ready("nope")
    assert not client.is_model_ready("simple", "4")
    cfg = client.get_model_config("simple").config
    assert cfg.max_batch_size == 8 and list(cfg.input[0].dims) == [16]
    stats = client.get_inference_statistics("simple", as_json=True)
    assert stats["model_stats"][0]["inference_count"] == "3"
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {"name": "unready", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"} in index
    client.load_model("unready", config="{}", files={"file:1/model.py": b"abc"})
    assert running.fake.loads[-1] == ("unready", "{}", {"file:1/model.py": b"abc"})
    client.unload_model("unready", unload_dependents=True)
    assert running.fake.unloads[-1] == ("unready", True)
    code, msg = status_of(client.load_model, "nope")
    assert code == "StatusCode.INTERNAL" and "failed to poll" in msg
    code, msg = status_of(client.get_model_metadata, "nope")
    assert code == "StatusCode.INVALID_ARGUMENT" and "is not found" in msg
    code, _ = status_of(client.get_model_config, "unready")
    assert code == "StatusCode.NOT_FOUND"


def test_infer_raw_and_typed(client, stub):
    a, b, inputs = simple_inputs(batch=2)
    res = client.infer("simple", inputs, request_id="g1",
                       outputs=[tg.InferRequestedOutput("OUTPUT1")])
    np.testing.assert_array_equal(res.as_numpy("OUTPUT1"), a - b)
    assert res.as_numpy("OUTPUT0") is None
    assert res.get_response().id == "g1"
    # typed contents (no raw_input_contents)
    req = pb.ModelInferRequest(model_name="simple")
    for name, arr in (("INPUT0", a), ("INPUT1", b)):
        t = req.inputs.add(name=name, datatype="INT32", shape=[2, 16])
        t.contents.int_contents.extend(arr.reshape(-1).tolist())
    resp = stub.ModelInfer(req)
    out = np.frombuffer(resp.raw_output_contents[0], dtype="<i4").reshape(2, 16)
    np.testing.assert_array_equal(out, a + b)
    req = pb.ModelInferRequest(model_name="identity")
    t = req.inputs.add(name="INPUT0", datatype="BYTES", shape=[2])
    t.contents.bytes_contents.extend([b"x", b"yz"])
    resp = stub.ModelInfer(req)
    assert resp.raw_output_contents[0] == b"\x01\0\0\0x\x02\0\0\0yz"


@pytest.mark.parametrize(
    "array,datatype",
    [
        (np.array([b"a", b"bc"], dtype=np.object_), "BYTES"),
        (np.array([[1.5, 2.0]], dtype=np.float16), "FP16"),
        (np.array([True, False]), "BOOL"),
        (np.array([2**63 + 1], dtype=np.uint64), "UINT64"),
    ],
)
def test_identity_types(client, array, datatype):
    inp = tg.InferInput("INPUT0", list(array.shape), datatype)
    inp.set_data_from_numpy(array)
    out = client.infer("identity", [inp]).as_numpy("OUTPUT0")
    np.testing.assert_array_equal(out, array)


def test_infer_parameters_and_classification(client, running):
    a, b, inputs = simple_inputs()
    res = client.infer("simple", inputs, sequence_id=9, sequence_end=True, priority=1,
                       timeout=100, parameters={"k": 3, "s": "v", "f": 0.5, "b": True})
    req = running.fake.last_request
    assert (req.correlation_id, req.flags, req.priority, req.timeout_us) == (9, 2, 1, 100)
    assert req.parameters == {"k": 3, "s": "v", "f": 0.5, "b": True}
    params = res.get_response().parameters
    assert params["k"].int64_param == 3 and params["b"].bool_param is True
    inp = tg.InferInput("INPUT0", [3], "INT32")
    inp.set_data_from_numpy(np.array([5, 9, 1], dtype=np.int32))
    res = client.infer("identity", [inp], outputs=[tg.InferRequestedOutput("OUTPUT0", class_count=1)])
    assert list(res.as_numpy("OUTPUT0")) == [b"9:1"]


def test_infer_errors(client, stub):
    _, _, inputs = simple_inputs()
    cases = [
        ("nope", "INVALID_ARGUMENT", "Request for unknown model: 'nope' is not found"),
        ("unready", "NOT_FOUND", "has no available versions"),
        ("full", "UNAVAILABLE", "Exceeds maximum queue size"),
        ("failing", "INTERNAL", "model failed"),
        ("repeat", "UNIMPLEMENTED", "doesn't support models with decoupled transaction policy"),
    ]
    for model, code, fragment in cases:
        ins = inputs if model == "nope" else [_one("INPUT0" if model != "repeat" else "IN")]
        got, msg = status_of(client.infer, model, ins)
        assert got == f"StatusCode.{code}" and fragment in msg, (model, got, msg)
    got, msg = status_of(client.infer, "simple", inputs, model_version="2")
    assert got == "StatusCode.UNAVAILABLE"
    bad = [
        pb.ModelInferRequest(model_name="identity", raw_input_contents=[b"x"]),
        pb.ModelInferRequest(model_name="identity", inputs=[
            pb.ModelInferRequest.InferInputTensor(name="INPUT0", datatype="FP16", shape=[1])]),
        pb.ModelInferRequest(model_name="identity", inputs=[
            pb.ModelInferRequest.InferInputTensor(name="INPUT0", datatype="NOPE", shape=[1])],
            raw_input_contents=[b"1234"]),
        pb.ModelInferRequest(model_name="identity", inputs=[
            pb.ModelInferRequest.InferInputTensor(name="INPUT0", datatype="INT32", shape=[2])],
            raw_input_contents=[b"1234"]),
        pb.ModelInferRequest(model_name="identity", inputs=[
            pb.ModelInferRequest.InferInputTensor(name="INPUT0", datatype="INT32", shape=[-2])],
            raw_input_contents=[b""]),
        pb.ModelInferRequest(model_name="identity", inputs=[
            pb.ModelInferRequest.InferInputTensor(name="INPUT0", datatype="BYTES", shape=[1])],
            raw_input_contents=[b"\x09\0\0\0ab"]),
        pb.ModelInferRequest(model_name="identity", model_version="x"),
    ]
    for req in bad:
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(req)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, req
    # still serving
    a, b, inputs = simple_inputs()
    np.testing.assert_array_equal(client.infer("simple", inputs).as_numpy("OUTPUT0"), a + b)


def _one(name, values=(1, 2, 3)):
    inp = tg.InferInput(name, [len(values)], "INT32")
    inp.set_data_from_numpy(np.array(values, dtype=np.int32))
    return inp


def test_unimplemented_rpcs(client, stub):
    code, _ = status_of(client.get_system_shared_memory_status)
    assert code == "StatusCode.UNIMPLEMENTED"
    code, _ = status_of(client.unregister_cuda_shared_memory)
    assert code == "StatusCode.UNIMPLEMENTED"
    with pytest.raises(grpc.RpcError) as info:
        stub.LogSettings(pb.LogSettingsRequest())
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with pytest.raises(grpc.RpcError) as info:
        stub.TraceSetting(pb.TraceSettingRequest())
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_health_check(running):
    with grpc.insecure_channel(running.grpc_url) as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                    request_serializer=lambda b: b,
                                    response_deserializer=lambda b: b)
        assert check(b"") == b"\x08\x01"
        assert check(b"\x0a\x06simple") == b"\x08\x01"
        assert check(b"\x0a\x07unready") == b"\x08\x02"
        with pytest.raises(grpc.RpcError) as info:
            check(b"\x0a\x04nope")
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        running.fake.server_ready = False
        try:
            assert check(b"") == b"\x08\x02"
        finally:
            running.fake.server_ready = True


class Collector:
    def __init__(self):
        self.q = queue.Queue()

    def __call__(self, result, error):
        self.q.put((result, error))

    def take(self, n, timeout=5):
        return [self.q.get(timeout=timeout) for _ in range(n)]


def test_stream_decoupled_concurrent(running):
    c = tg.InferenceServerClient(running.grpc_url)
    got = Collector()
    c.start_stream(callback=got)
    try:
        c.async_stream_infer("repeat", [_one("IN", (1, 2, 3))], request_id="a")
        c.async_stream_infer("repeat", [_one("IN", (7, 8))], request_id="b",
                             enable_empty_final_response=True)
        a, b, inputs = simple_inputs()
        c.async_stream_infer("simple", inputs, request_id="c")
        items = got.take(7)
    finally:
        c.stop_stream()
        c.close()
    assert all(err is None for _, err in items)
    by_id: dict = {}
    for res, _ in items:
        r = res.get_response()
        by_id.setdefault(r.id, []).append(
            (res.as_numpy("OUT"), r.parameters["triton_final_response"].bool_param))
    assert [int(v[0]) for v, f in by_id["a"]] == [1, 2, 3]
    assert [f for _, f in by_id["a"]] == [False, False, False]
    assert [f for _, f in by_id["b"]] == [False, False, True]
    assert by_id["b"][-1][0] is None  # the empty final: no outputs
    assert [f for _, f in by_id["c"]] == [True]


def test_stream_errors_keep_stream_open(running):
    c = tg.InferenceServerClient(running.grpc_url)
    got = Collector()
    c.start_stream(callback=got)
    try:
        c.async_stream_infer("nope", [_one("IN")], request_id="x")
        c.async_stream_infer("failing", [_one("INPUT0")], request_id="y")
        c.async_stream_infer("repeat", [_one("IN", (4,))], request_id="z")
        items = got.take(3)
    finally:
        c.stop_stream()
        c.close()
    errors = sorted(str(e) for _, e in items if e is not None)
    assert len(errors) == 2
    assert any("is not found" in e for e in errors) and any("model failed" in e for e in errors)
    ok = [r for r, e in items if e is None]
    assert int(ok[0].as_numpy("OUT")[0]) == 4


def test_stream_grpc_error_header_ends_stream(running):
    c = tg.InferenceServerClient(running.grpc_url)
    got = Collector()
    c.start_stream(callback=got, headers={"triton_grpc_error": "true"})
    try:
        c.async_stream_infer("nope", [_one("IN")])
        (res, err), = got.take(1)
    finally:
        c.stop_stream()
        c.close()
    assert res is None and err.status() == "StatusCode.INVALID_ARGUMENT"


def test_stream_cancel_cancels_requests(running):
    started, cancelled = running.fake.fresh_events("slow_stream")
    c = tg.InferenceServerClient(running.grpc_url)
    got = Collector()
    c.start_stream(callback=got)
    try:
        c.async_stream_infer("slow_stream", [_one("INPUT0")])
        got.take(1)
        assert started.is_set()
    finally:
        c.stop_stream(cancel_requests=True)
        c.close()
    assert cancelled.wait(5)


def test_unary_cancel_cancels_request(running):
    started, cancelled = running.fake.fresh_events("slow")

    async def main():
        async with tga.InferenceServerClient(running.grpc_url) as c:
            task = asyncio.ensure_future(c.infer("slow", [_one("INPUT0")]))
            while not started.is_set():
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises((asyncio.CancelledError, InferenceServerException)):
                await task

    asyncio.run(main())
    assert cancelled.wait(5)


def test_aio_client_and_stream(running):
    async def main():
        async with tga.InferenceServerClient(running.grpc_url) as c:
            assert await c.is_server_ready()
            a, b, inputs = simple_inputs()
            results = await asyncio.gather(*[c.infer("simple", inputs) for _ in range(6)])
            for res in results:
                np.testing.assert_array_equal(res.as_numpy("OUTPUT0"), a + b)

            async def requests():
                for i in range(3):
                    yield {"model_name": "repeat", "inputs": [_one("IN", (i, i))],
                           "request_id": str(i)}

            seen = []
            async for res, err in c.stream_infer(requests()):
                assert err is None
                seen.append((res.get_response().id, int(res.as_numpy("OUT")[0])))
                if len(seen) == 6:
                    break
            assert sorted(seen) == [("0", 0), ("0", 0), ("1", 1), ("1", 1), ("2", 2), ("2", 2)]

    asyncio.run(main())


def test_many_streams_quickly(running):
    start = time.monotonic()
    c = tg.InferenceServerClient(running.grpc_url)
    got = Collector()
    c.start_stream(callback=got)
    try:
        for i in range(40):
            c.async_stream_infer("repeat", [_one("IN", (i,))], request_id=str(i))
        items = got.take(40)
    finally:
        c.stop_stream()
        c.close()
    assert sorted(int(r.get_response().id) for r, _ in items) == list(range(40))
    assert time.monotonic() - start < 10
