"""Running the generations of one request together: merged deltas for streaming, SSE
`data: {chunk}` events ending with `data: [DONE]`, collection for non-streaming calls,
and cancellation of every generation when the client disconnects."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from pydantic import BaseModel
from starlette.requests import Request

from llmserve.core.types import CancellationToken
from llmserve.frontends.http_common import until_disconnect
from llmserve.frontends.openai.errors import as_openai_error
from llmserve.frontends.openai.generation import Delta, Generation
from llmserve.frontends.openai.logprobs import TokenLogprob
from llmserve.frontends.sse import EventStream

logger = logging.getLogger(__name__)

_END = object()


def cancel_all(gens: list[Generation]) -> None:
    for gen in gens:
        if not gen._done:
            gen.request.cancel.cancel()


async def close_all(gens: list[Generation]) -> None:
    """Cancel unfinished generations at once, then release them (shielded, so a
    cancelled caller still frees the server's generators)."""
    cancel_all(gens)
    with anyio.CancelScope(shield=True):
        for gen in gens:
            with contextlib.suppress(Exception):
                await gen.close()


def _token_for(gens: list[Generation]) -> CancellationToken:
    """One token that cancels every generation (for until_disconnect)."""
    token = CancellationToken()
    for gen in gens:
        token.add_callback(gen.request.cancel.cancel)
    return token


async def start_all(http: Request, gens: list[Generation]) -> None:
    """Submit every generation and wait for its first response (request errors raise
    here, before a status is sent); a client that disconnects meanwhile cancels all."""

    async def start() -> None:
        results = await asyncio.gather(*(g.start() for g in gens), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]

    try:
        await until_disconnect(http, start(), _token_for(gens))
    except BaseException:
        await close_all(gens)
        raise


async def merge(gens: list[Generation]) -> AsyncIterator[tuple[int, Delta]]:
    """(choice index, delta) from all generations as they come. Each generation is read
    only as fast as the consumer takes its deltas (one waits in the queue at most), so a
    slow client holds the server's tokens back where they can merge (README "Streamed
    tokens under load") instead of in a queue here."""
    if len(gens) == 1:  # the common case: no pump task, no queue hop per token
        try:
            async for delta in gens[0].deltas():
                yield 0, delta
        finally:
            cancel_all(gens)
        return
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue(maxsize=len(gens))

    async def pump(index: int, gen: Generation) -> None:
        try:
            async for delta in gen.deltas():
                await queue.put((index, delta))
        except asyncio.CancelledError:
            raise  # the consumer is gone: nobody would take a put
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            await queue.put((index, exc))
            return
        await queue.put((index, _END))

    tasks = [asyncio.ensure_future(pump(i, g)) for i, g in enumerate(gens)]
    try:
        remaining = len(tasks)
        while remaining:
            index, item = await queue.get()
            if item is _END:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        cancel_all(gens)
        for task in tasks:
            task.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.gather(*tasks, return_exceptions=True)
            await close_all(gens)


@dataclass(slots=True)
class Collected:
    """Everything one choice produced."""

    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob] | None = None
    completion_tokens: int = 0
    finish_reason: str | None = None


async def collect(request: Request, gens: list[Generation]) -> list[Collected]:
    """Run every generation to its end; a client that disconnects cancels them all."""
    token = _token_for(gens)
    out = [Collected() for _ in gens]

    async def work() -> None:
        async for index, delta in merge(gens):
            c = out[index]
            c.text += delta.text
            c.logprobs.extend(delta.logprobs)
            if delta.prompt_logprobs is not None:
                c.prompt_logprobs = delta.prompt_logprobs
            c.completion_tokens = max(c.completion_tokens, delta.completion_tokens)
            if delta.finish_reason is not None:
                c.finish_reason = delta.finish_reason

    try:
        await until_disconnect(request, work(), token)
    finally:
        await close_all(gens)
    return out


class TextChunks:
    """The JSON of a streamed chunk whose one changing part is a string (a chat delta's
    content, a completion's text): pydantic renders the chunk once around a marker, and
    each chunk is that template with the text put in by json.dumps (about 1 us against
    pydantic's 11 to build and render the models per chunk). The bytes are pydantic's up to
    the escaping of the text, which both do as JSON."""

    _MARK = "\u0000llmserve-text\u0000"

    def __init__(self, render: Callable[[str], BaseModel]) -> None:
        self._render = render
        encoded = json.dumps(self._MARK)
        head, mark, tail = render(self._MARK).model_dump_json().partition(encoded)
        self._parts = (head, tail) if mark and encoded not in tail else None

    def __call__(self, text: str) -> str:
        if self._parts is None:  # the marker was not found once: render it all
            return self._render(text).model_dump_json()
        return self._parts[0] + json.dumps(text, ensure_ascii=False) + self._parts[1]


def _dump(item: BaseModel | dict | str) -> str:
    if isinstance(item, str):  # rendered already (TextChunks)
        return item
    if isinstance(item, BaseModel):
        return item.model_dump_json()
    return json.dumps(item)


def sse_response(events: AsyncIterator[BaseModel | dict | str],
                 on_close: Callable[[], Any]) -> EventStream:
    """`data: {chunk}` per item then `data: [DONE]`; an error after the stream began is
    sent as one `data: {"error": ...}` event. on_close runs however the stream ends
    (client disconnect included) and must cancel the generations."""

    async def body() -> AsyncIterator[dict]:
        try:
            async for item in events:
                yield {"data": _dump(item)}
        except Exception as exc:  # noqa: BLE001 - the status is sent already
            yield {"data": json.dumps(as_openai_error(exc).body())}
        finally:
            on_close()
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(Exception):
                    await events.aclose()  # type: ignore[attr-defined]
        yield {"data": "[DONE]"}

    return EventStream(body(), sep="\n", ping=15)
