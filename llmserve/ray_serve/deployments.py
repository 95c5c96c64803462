"""The two Ray Serve deployments of an llmserve application: LLMServeReplica, a full
llmserve core (InferenceServer, its engines and its FastAPI app) per replica, and
LLMServeIngress, which takes every HTTP request from Ray Serve's proxy and forwards it,
body included, so the prefix-aware router can read the prompt, to one replica."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import ray
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import ReplicaUnavailableError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from llmserve.frontends.errors import BodyTooLarge, error_response
from llmserve.options import ServerOptions
from llmserve.ray_serve.forward import (
    REPLICA_HEADER,
    ForwardedRequest,
    ResponseHead,
    replay,
)

log = logging.getLogger(__name__)
REPLICA_GONE = (RayActorError, ReplicaUnavailableError)


class LLMServeReplica:
    """One llmserve core. It opens no port: forwarded requests run through its app."""

    async def __init__(self, options: ServerOptions) -> None:
        from llmserve.frontends import build_http_app
        from llmserve.server import InferenceServer

        if not os.environ.get("LLMSERVE_ENGINE_THREADS", "").strip():
            # the engine's intra-op threads: the CPUs Ray gave this replica
            cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
            os.environ["LLMSERVE_ENGINE_THREADS"] = str(max(1, int(cpus)))
        options = dataclasses.replace(options, allow_http=False, allow_grpc=False,
                                      allow_metrics=False)
        self.server = InferenceServer(options, freeze_heap=True)
        await self.server.start()
        self.app = build_http_app(self.server, options)
        name = serve.get_replica_context().replica_id.to_full_id_str()
        self.tag = [(REPLICA_HEADER, name.encode())]

    async def forward(self, req: ForwardedRequest) -> AsyncIterator[Any]:
        async for item in replay(self.app, req, self.tag):
            yield item

    async def respond(self, req: ForwardedRequest) -> ResponseHead:
        """The whole response in one reply: a unary call costs Ray about half of a
        streamed one (docs/SCALING.md)."""
        head: ResponseHead | None = None
        rest: list[bytes] = []
        async for item in replay(self.app, req, self.tag):
            if head is None:
                head = item
            else:
                rest.append(item)
        assert head is not None  # replay raises when the app sends no response
        head.body, head.more = b"".join([head.body, *rest]), False
        return head

    async def check_health(self) -> None:
        if not self.server.is_live():
            raise RuntimeError("the llmserve core of this replica is not live")

    async def __del__(self) -> None:
        await self.server.stop()


def replica_gone_response(path: str) -> Response:
    """503 for a request whose replica died: in OpenAI's error shape on /v1 routes, in
    llmserve's (Triton's) {"error": message} everywhere else."""
    message = ("the llmserve replica serving this request died; the request was lost "
               "(Ray replaces the replica; retry it)")
    if path.startswith("/v1/"):
        body = {"error": {"message": message, "type": "server_error", "param": None,
                          "code": "service_unavailable"}}
        return Response(json.dumps(body), status_code=503, media_type="application/json")
    return error_response(503, message)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        parts.append(chunk)
    return b"".join(parts)


class LLMServeIngress:
    """Ray Serve's HTTP entry: every path goes to a replica's llmserve app unchanged."""

    def __init__(self, replicas: Any, max_body_bytes: int) -> None:
        self.replicas = replicas.options(stream=True)
        self.unary = replicas
        self.max_body_bytes = max_body_bytes

    async def __call__(self, request: Request) -> Response:
        try:
            body = await _read_body(request, self.max_body_bytes)
        except BodyTooLarge as exc:
            return error_response(413, str(exc))
        client = request.scope.get("client")
        req = ForwardedRequest(
            method=request.method, path=request.scope["path"],
            query_string=request.scope.get("query_string", b""),
            headers=list(request.scope.get("headers", [])), body=body,
            client=tuple(client) if client else None, scheme=request.url.scheme)
        stream = None
        try:
            if may_stream(req):
                stream = self.replicas.forward.remote(req)
                head: ResponseHead = await stream.__anext__()
            else:
                head = await self.unary.respond.remote(req)
        except REPLICA_GONE as exc:
            log.warning("replica lost during %s %s: %s", req.method, req.path, exc)
            return replica_gone_response(req.path)
        except Exception as exc:  # a bug of ours in the replica: one JSON line, not a trace
            log.error("replica failed on %s %s", req.method, req.path, exc_info=exc)
            return error_response(500, f"internal error in the llmserve replica: "
                                       f"{type(exc).__name__}")
        if not head.more:
            response = Response(head.body, status_code=head.status)
            response.raw_headers = list(head.headers)
            return response
        streaming = any(k.lower() == b"content-type" and b"text/event-stream" in v
                        for k, v in head.headers)
        response = StreamingResponse(_rest(head.body, stream, req.path, streaming),
                                     status_code=head.status)
        response.raw_headers = list(head.headers)
        return response


def may_stream(req: ForwardedRequest) -> bool:
    """Whether the response may come in pieces (server-sent events): generate_stream, and
    OpenAI requests asking for a stream. Every other response is sent whole."""
    if req.path.endswith("/generate_stream"):
        return True
    return req.path.startswith("/v1/") and b'"stream"' in req.body and _asks_stream(req.body)


def _asks_stream(body: bytes) -> bool:
    try:
        return bool(json.loads(body).get("stream"))
    except (ValueError, AttributeError):
        return False  # the replica answers the bad body with its own error


async def _rest(first: bytes, stream: Any, path: str, sse: bool) -> AsyncIterator[bytes]:
    """The body after the head. A replica that dies mid-stream ends an event stream with
    one error event, as a failure after the status was sent is reported in-stream."""
    finished = False
    try:
        if first:
            yield first
        async for chunk in stream:
            yield chunk
        finished = True
    except REPLICA_GONE as exc:
        log.warning("replica lost while streaming %s: %s", path, exc)
        if sse:
            gone = json.loads(replica_gone_response(path).body)
            yield f"data: {json.dumps(gone)}\n\n".encode()
    finally:
        if not finished:
            stream.cancel()  # a client that went away cancels the replica's generation
