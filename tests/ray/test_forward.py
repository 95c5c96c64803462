"""A forwarded request replayed through an ASGI app without Ray: the head carries the
whole body of a plain response, a streamed one follows in chunks, and a consumer that
stops early cancels the app (as a client that went away cancels its generation)."""

from __future__ import annotations

import asyncio

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from llmserve.ray_serve.forward import ForwardedRequest, ResponseHead, replay

cancelled = asyncio.Event()


async def echo(request: Request) -> JSONResponse:
    body = await request.json()
    return JSONResponse({"got": body, "q": request.query_params.get("q"),
                         "h": request.headers.get("x-test")}, status_code=201)


async def stream(request: Request) -> StreamingResponse:
    async def chunks():
        try:
            for i in range(1000):
                yield f"chunk {i}\n".encode()
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    return StreamingResponse(chunks(), media_type="text/event-stream")


APP = Starlette(routes=[Route("/echo", echo, methods=["POST"]), Route("/stream", stream)])


async def _collect(req: ForwardedRequest, limit: int | None = None) -> list:
    items = []
    gen = replay(APP, req, [(b"llmserve-replica", b"r1")])
    async for item in gen:
        items.append(item)
        if limit is not None and len(items) >= limit:
            break
    await gen.aclose()
    return items


def test_plain_response_comes_whole_in_the_head():
    req = ForwardedRequest("POST", "/echo", b"q=1", [(b"x-test", b"yes"),
                           (b"content-type", b"application/json")], b'{"a": 1}')
    [head] = asyncio.run(_collect(req))
    assert isinstance(head, ResponseHead) and head.status == 201 and not head.more
    assert (b"llmserve-replica", b"r1") in head.headers
    assert head.body == b'{"got":{"a":1},"q":"1","h":"yes"}'


def test_streamed_response_follows_in_chunks_and_an_early_stop_cancels_the_app():
    async def run() -> list:
        items = await _collect(ForwardedRequest("GET", "/stream"), limit=3)
        await asyncio.wait_for(cancelled.wait(), 5)
        return items

    head, *rest = asyncio.run(run())
    assert head.status == 200 and head.more
    assert b"".join([head.body, *rest]).startswith(b"chunk 0\n")
    assert all(isinstance(c, bytes) for c in rest)


def test_only_event_streams_take_the_streamed_call():
    from llmserve.ray_serve.deployments import may_stream

    def req(path: str, body: bytes = b"") -> ForwardedRequest:
        return ForwardedRequest("POST", path, body=body)

    assert may_stream(req("/v2/models/ensemble/generate_stream", b"{}"))
    assert may_stream(req("/v1/chat/completions", b'{"stream": true, "messages": []}'))
    assert not may_stream(req("/v1/chat/completions", b'{"stream": false}'))
    assert not may_stream(req("/v1/completions", b'{"stream": '))  # bad JSON: answered whole
    assert not may_stream(req("/v2/models/ensemble/generate", b'{"stream": true}'))
    assert not may_stream(ForwardedRequest("GET", "/v2/health/ready"))
