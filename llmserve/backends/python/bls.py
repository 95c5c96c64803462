"""Business Logic Scripting: a model's InferenceRequest.exec/async_exec run through the
server's normal inference path on the server loop; responses cross back to the calling
thread (sync) or the calling event loop (async).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any

from llmserve.backends.python.errors import TritonError
from llmserve.backends.python.response import InferenceResponse
from llmserve.core.errors import InternalError, ServerError
from llmserve.core.types import CancellationToken
from llmserve.core.types import InferenceRequest as CoreRequest
from llmserve.core.types import InferenceResponse as CoreResponse

_END = object()


def _error_response(exc: BaseException) -> InferenceResponse:
    from llmserve.backends.python.errors import from_server_error

    if isinstance(exc, ServerError):
        return InferenceResponse(error=from_server_error(exc))
    return InferenceResponse(error=TritonError(f"{type(exc).__name__}: {exc}"))


def _start(server: Any, request: CoreRequest, put) -> None:
    """Pump the server's responses for `request` into put(item); _END closes."""

    async def pump() -> None:
        try:
            async for resp in server.infer_internal(request):
                put(resp)
        except ServerError as exc:
            put(exc)
        except Exception as exc:  # never leave the caller waiting
            put(InternalError(f"BLS request failed: {exc}"))
        finally:
            put(_END)

    loop = server.loop
    if loop is None or loop.is_closed():
        raise InternalError("the server is not running")
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        raise InternalError("BLS requests cannot be made from the server's event loop")
    asyncio.run_coroutine_threadsafe(pump(), loop)


def _convert(item: Any) -> InferenceResponse:
    if isinstance(item, BaseException):
        return _error_response(item)
    assert isinstance(item, CoreResponse)
    return InferenceResponse._from_core(item)


class ResponseIterator:
    """Responses of a decoupled BLS call; iterate with `for` or `async for`.
    The final (possibly empty) response ends the iteration.

    parents: cancellation tokens of the requests the calling execute serves. When all of
    them are cancelled (their clients went away) the call is cancelled and its iteration
    ends quietly, so a model that never checks is_cancelled() (tensorrtllm_backend's own
    BLS) does not leave a generation running to max_tokens for nobody."""

    def __init__(self, server: Any, request: CoreRequest, loop: asyncio.AbstractEventLoop | None,
                 parents: tuple[CancellationToken, ...] = ()):
        self._cancel: CancellationToken = request.cancel
        self._done = False
        self._orphaned = False
        if parents:
            def orphan() -> None:
                if all(p.is_cancelled() for p in parents):
                    self._orphaned = True
                    self._cancel.cancel()

            for parent in parents:
                parent.add_callback(orphan)
        if loop is None:
            self._queue: Any = queue.Queue()
            put = self._queue.put
        else:
            self._queue = asyncio.Queue()
            q = self._queue

            def put(item: Any) -> None:
                try:
                    loop.call_soon_threadsafe(q.put_nowait, item)
                except RuntimeError:  # the caller's loop is gone
                    pass

        _start(server, request, put)

    def cancel(self) -> None:
        self._cancel.cancel()

    def __iter__(self) -> ResponseIterator:
        return self

    def __next__(self) -> InferenceResponse:
        if self._done:
            raise StopIteration
        if isinstance(self._queue, asyncio.Queue):
            raise TypeError("use 'async for' on responses of async_exec")
        item = self._queue.get()
        return self._step(item, StopIteration)

    def __aiter__(self) -> ResponseIterator:
        return self

    async def __anext__(self) -> InferenceResponse:
        if self._done:
            raise StopAsyncIteration
        if isinstance(self._queue, asyncio.Queue):
            item = await self._queue.get()
        else:
            item = await asyncio.get_running_loop().run_in_executor(None, self._queue.get)
        return self._step(item, StopAsyncIteration)

    def _step(self, item: Any, stop: type[Exception]) -> InferenceResponse:
        if item is _END or self._orphaned:
            self._done = True
            raise stop
        if isinstance(item, BaseException) or item.final:
            self._done = True
        return _convert(item)


def exec_sync(server: Any, request: CoreRequest) -> InferenceResponse:
    """One response for a non-decoupled BLS call (blocking)."""
    q: queue.Queue = queue.Queue()
    _start(server, request, q.put)
    return _collect_one(iter(q.get, _END), request)


async def exec_async(server: Any, request: CoreRequest) -> InferenceResponse:
    loop = asyncio.get_running_loop()
    q: asyncio.Queue = asyncio.Queue()
    done = threading.Event()

    def put(item: Any) -> None:
        if item is _END:
            done.set()
        try:
            loop.call_soon_threadsafe(q.put_nowait, item)
        except RuntimeError:
            pass

    _start(server, request, put)
    items = []
    try:
        while True:
            item = await q.get()
            if item is _END:
                break
            items.append(item)
    except asyncio.CancelledError:
        request.cancel.cancel()
        raise
    return _collect_one(iter(items), request)


def _collect_one(items, request: CoreRequest) -> InferenceResponse:
    result: InferenceResponse | None = None
    for item in items:
        converted = _convert(item)
        if result is None or (converted.has_error() and not result.has_error()):
            if isinstance(item, BaseException) or item.outputs or item.error is not None or result is None:
                result = converted
    if result is None:
        return InferenceResponse(error=TritonError(
            f"model '{request.model_name}' sent no response to the BLS request"))
    return result
