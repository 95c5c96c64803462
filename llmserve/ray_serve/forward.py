"""One HTTP request carried from the Ray Serve ingress to a replica as plain data, and
its replay through the replica's own llmserve FastAPI app (the same routes, handlers,
middleware and errors as the single-process server): the response comes back as a head
(status, headers, first body bytes) and then body chunks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message

REPLICA_HEADER = b"llmserve-replica"  # the full Ray id of the replica that answered


@dataclass(slots=True)
class ForwardedRequest:
    method: str
    path: str
    query_string: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    client: tuple[str, int] | None = None
    scheme: str = "http"


@dataclass(slots=True)
class ResponseHead:
    """The first item of a forwarded response: more=False means body is all of it."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    more: bool


def _scope(req: ForwardedRequest) -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1", "method": req.method, "scheme": req.scheme,
        "path": req.path, "raw_path": req.path.encode("utf-8"), "root_path": "",
        "query_string": req.query_string, "headers": list(req.headers),
        "client": req.client, "server": ("127.0.0.1", 0), "state": {},
    }


async def replay(app: ASGIApp, req: ForwardedRequest,
                 extra_headers: list[tuple[bytes, bytes]] = ()) -> AsyncIterator[Any]:
    """Run req through app; yield a ResponseHead, then bytes chunks while more follow.
    Closing this generator early (the client went away) tells the app the client
    disconnected and cancels it, which cancels the request's generation."""
    messages: asyncio.Queue[Message | None] = asyncio.Queue()
    gone = asyncio.Event()
    body_sent = False

    async def receive() -> Message:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": req.body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        messages.put_nowait(message)

    task = asyncio.ensure_future(app(_scope(req), receive, send))
    task.add_done_callback(lambda _: messages.put_nowait(None))
    complete = head_sent = False
    head: ResponseHead | None = None
    try:
        while not complete:
            batch = [await messages.get()]
            # what is already queued goes in one item: each item is one Ray object
            while not messages.empty():
                batch.append(messages.get_nowait())
            chunks: list[bytes] = []
            for message in batch:
                if message is None:  # the app returned (or raised) without finishing
                    complete = True
                    break
                if message["type"] == "http.response.start":
                    head = ResponseHead(message["status"],
                                        [*message.get("headers", []), *extra_headers],
                                        b"", False)
                elif message["type"] == "http.response.body":
                    chunks.append(message.get("body", b""))
                    if not message.get("more_body", False):
                        complete = True
                        break
            if head is None:
                if complete:  # the app ended before any response: ErrorGuard never lets
                    raise RuntimeError("the HTTP app ended without a response")
                continue
            if not head_sent:
                head.body, head.more, head_sent = b"".join(chunks), not complete, True
                yield head
            elif chunks:
                yield b"".join(chunks)
    finally:
        gone.set()
        if not complete:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
