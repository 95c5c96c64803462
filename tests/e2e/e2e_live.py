"""A real InferenceServer behind the real frontends on a background asyncio loop, with
ports chosen at run time (e2e_options): used by the e2e fixtures and LLM e2e helpers."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path

from llmserve.frontends import start_frontends
from llmserve.options import ServerOptions

MODELS = Path(__file__).parent / "models"


class LiveServer:
    def __init__(self, options: ServerOptions) -> None:
        from llmserve.server import InferenceServer

        self.options = options
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = InferenceServer(options)
        self.call(self.server.start(), timeout=120)
        self.frontends = self.call(start_frontends(self.server, options))

    def call(self, coro, timeout: float = 30):  # noqa: ANN001
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=timeout)

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.frontends.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.frontends.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.frontends.metrics_port}/metrics"

    @contextlib.contextmanager
    def clients(self):
        """(tritonclient.http client, tritonclient.grpc client) on this server."""
        import tritonclient.grpc as tg
        import tritonclient.http as th

        hc, gc = th.InferenceServerClient(self.http_url), tg.InferenceServerClient(self.grpc_url)
        try:
            yield hc, gc
        finally:
            hc.close()
            gc.close()

    def stop(self) -> None:
        try:
            self.call(self.server.stop(), timeout=60)
            self.call(self.frontends.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.loop.close()


def e2e_options(**kw) -> ServerOptions:  # noqa: ANN003
    base = dict(
        model_repositories=[MODELS], http_address="127.0.0.1", http_port=0,
        grpc_address="127.0.0.1", grpc_port=0, metrics_address="127.0.0.1", metrics_port=0,
        exit_timeout_secs=5.0,
    )
    base.update(kw)
    return ServerOptions(**base)
