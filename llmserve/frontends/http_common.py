"""HTTP plumbing shared by the KServe, generate and other HTTP routes: the body size
limit (ASGI middleware), bounded decompression, and cancelling work on client disconnect."""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import Awaitable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmserve.core.errors import InvalidArgument
from llmserve.core.types import CancellationToken
from llmserve.frontends.errors import (
    BodyTooLarge,
    ClientDisconnected,
    error_response,
    http_error,
)

T = TypeVar("T")


class BodyLimitMiddleware:
    """Refuse bodies over `limit` bytes with 413: at once by Content-Length, and by
    counting streamed (chunked) bytes so no route ever buffers more than the limit."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await error_response(400, "invalid Content-Length")(scope, receive, send)
                    return
                if declared > self.limit:
                    await error_response(413, str(BodyTooLarge(self.limit)))(scope, receive, send)
                    return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, counting_receive, send)


class ErrorGuardMiddleware:
    """Answer an exception that no handler took with a JSON 500 while the response has
    not started. Starlette's own last-resort handler answers too but then re-raises, and
    uvicorn closes the connection, so a keep-alive client's next request would fail."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                raise  # mid-response: only closing the connection can tell the client
            await http_error(exc)(scope, receive, send)


def decode_content(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo Content-Encoding gzip/deflate without inflating past `limit` bytes."""
    if not encoding or encoding.strip().lower() == "identity":
        return body
    enc = encoding.strip().lower()
    if enc == "gzip":
        wbits = 16 + zlib.MAX_WBITS
    elif enc == "deflate":
        wbits = zlib.MAX_WBITS
    else:
        raise InvalidArgument(f"unsupported Content-Encoding '{encoding}'")
    decomp = zlib.decompressobj(wbits)
    try:
        out = decomp.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidArgument(f"failed to decompress the request body: {exc}") from None
    if len(out) > limit or decomp.unconsumed_tail:
        raise BodyTooLarge(limit)
    return out


async def read_body(request: Request, limit: int) -> bytes:
    body = await request.body()
    return decode_content(body, request.headers.get("content-encoding"), limit)


async def wait_for_disconnect(request: Request) -> None:
    """Return once the client has gone; call only after the body was read."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnect(
    request: Request, work: Awaitable[T], cancel: CancellationToken
) -> T:
    """Await `work`; if the client disconnects first, cancel the request and the work."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        cancel.cancel()
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    cancel.cancel()
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    raise ClientDisconnected()


def as_bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(f"{what} must be a boolean")
    return value
