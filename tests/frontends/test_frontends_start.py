"""start_frontends: allow_* flags, the metrics port, bind failures and clean stop."""

from __future__ import annotations

import asyncio
import socket

import httpx
import numpy as np
import pytest
import tritonclient.http as th
from frontends_double import FakeServer, Running

from llmserve.frontends import start_frontends
from llmserve.options import ServerOptions


def test_metrics_endpoint(running):
    c = th.InferenceServerClient(running.http_url)
    try:
        inp = th.InferInput("INPUT0", [1], "INT32")
        inp.set_data_from_numpy(np.array([1], dtype=np.int32))
        c.infer("identity", [inp])
    finally:
        c.close()
    url = f"http://127.0.0.1:{running.frontends.metrics_port}"
    r = httpx.get(url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert 'nv_inference_request_success_total{model="identity",version="1"}' in r.text
    assert httpx.get(url + "/other").status_code == 404
    # the metrics port does not serve the inference API, nor the HTTP port metrics
    assert httpx.get(url + "/v2/health/live").status_code == 404


def test_allow_flags_start_only_what_is_asked():
    r = Running(ServerOptions(http_address="127.0.0.1", http_port=0, allow_grpc=False,
                              allow_metrics=False))
    try:
        fe = r.frontends
        assert fe.http_port and fe.grpc_port is None and fe.metrics_port is None
        assert httpx.get(f"http://{r.http_url}/v2/health/live").status_code == 200
    finally:
        r.stop()


def test_bind_failure_is_clear_and_leaves_nothing_running():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        opts = ServerOptions(http_address="127.0.0.1", http_port=0, grpc_address="127.0.0.1",
                             grpc_port=0, metrics_address="127.0.0.1", metrics_port=port)

        async def main():
            with pytest.raises(OSError, match=f"{port}"):
                await start_frontends(FakeServer(), opts)

        asyncio.run(main())


def test_stop_is_idempotent_and_frees_ports():
    opts = ServerOptions(http_address="127.0.0.1", http_port=0, grpc_address="127.0.0.1",
                         grpc_port=0, metrics_address="127.0.0.1", metrics_port=0)

    async def main():
        fe = await start_frontends(FakeServer(), opts)
        port = fe.http_port
        await fe.stop()
        await fe.stop()
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))

    asyncio.run(main())
