"""Network frontends of an InferenceServer: KServe v2 HTTP (+ generate), KServe v2 gRPC
and the Prometheus metrics endpoint, all served from the caller's asyncio loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import uvicorn
from fastapi import APIRouter

from llmserve.frontends.event_loop import http_implementation
from llmserve.frontends.grpc_service import start_grpc
from llmserve.frontends.http_app import build_http_app, build_metrics_app
from llmserve.options import ServerOptions

logger = logging.getLogger(__name__)

__all__ = ["Frontends", "start_frontends", "build_http_app", "build_metrics_app"]


@dataclass
class _UvicornServer:
    """A uvicorn server driven on the current loop without taking over signals."""

    server: uvicorn.Server
    sock: socket.socket
    task: asyncio.Task | None = None

    @classmethod
    async def start(cls, app: Any, address: str, port: int, grace: float) -> _UvicornServer:
        sock = _bind(address, port)
        config = uvicorn.Config(
            app,
            lifespan="off",
            http=http_implementation(),
            ws="none",
            access_log=False,
            log_config=None,
            timeout_graceful_shutdown=max(1, int(grace)),
        )
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[sock])
        self = cls(server, sock)
        self.task = asyncio.ensure_future(server.main_loop())
        return self

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.server.shutdown(sockets=[self.sock])


def _bind(address: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on accepted sockets whose
    # proto is IPPROTO_TCP (proto 0 leaves Nagle on, holding streamed tokens ~40 ms on
    # keep-alive connections behind the client's delayed ACK).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((address, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"failed to bind {address}:{port}: {exc.strerror or exc}") from exc
    sock.setblocking(False)
    return sock


@dataclass
class Frontends:
    """The running frontends; ports are the bound ones (useful with port 0)."""

    http_port: int | None = None
    grpc_port: int | None = None
    metrics_port: int | None = None
    _http: _UvicornServer | None = None
    _metrics: _UvicornServer | None = None
    _grpc: grpc.aio.Server | None = None
    _grace: float = 5.0
    _stopped: bool = field(default=False, repr=False)

    async def stop(self) -> None:
        """Stop accepting, let in-flight calls finish (bounded), close everything."""
        if self._stopped:
            return
        self._stopped = True
        jobs = []
        if self._grpc is not None:
            jobs.append(self._grpc.stop(self._grace))
        for srv in (self._http, self._metrics):
            if srv is not None:
                jobs.append(srv.stop())
        for result in await asyncio.gather(*jobs, return_exceptions=True):
            if isinstance(result, BaseException):
                logger.warning("error while stopping a frontend: %s", result)


async def start_frontends(
    server: Any,
    options: ServerOptions,
    routers: Sequence[APIRouter] = (),
    grace_secs: float = 5.0,
) -> Frontends:
    """Start HTTP, gRPC and metrics per options.allow_*; extra routers join the HTTP app."""
    fe = Frontends(_grace=grace_secs)
    try:
        if options.allow_http:
            app = build_http_app(server, options, routers)
            fe._http = await _UvicornServer.start(
                app, options.http_address, options.http_port, grace_secs
            )
            fe.http_port = fe._http.port
            logger.info("HTTP (KServe v2) on %s:%d", options.http_address, fe.http_port)
        if options.allow_grpc:
            fe._grpc, fe.grpc_port = await start_grpc(
                server, options.grpc_address, options.grpc_port,
                options.grpc_restricted_protocols,
            )
            logger.info("gRPC (KServe v2) on %s:%d", options.grpc_address, fe.grpc_port)
        if options.allow_metrics:
            fe._metrics = await _UvicornServer.start(
                build_metrics_app(server), options.metrics_address, options.metrics_port, 1.0
            )
            fe.metrics_port = fe._metrics.port
            logger.info("metrics on %s:%d/metrics", options.metrics_address, fe.metrics_port)
    except BaseException:
        await fe.stop()
        raise
    return fe
