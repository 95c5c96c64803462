"""Business Logic Scripting: a model's InferenceRequest.exec/async_exec run through the
server's normal inference path (submitted from the calling thread, or on the server loop
for ensembles); responses cross back to the calling thread (sync) or the calling event
loop (async). In a stub process the "server" is the stub's link to the real one
(start_bls), which runs start() there.
"""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
from collections.abc import Callable
from typing import Any

from llmserve.backends.python.errors import TritonError
from llmserve.backends.python.response import InferenceResponse
from llmserve.core.errors import InternalError, InvalidArgument, ServerError
from llmserve.core.types import CancellationToken
from llmserve.core.types import InferenceRequest as CoreRequest
from llmserve.core.types import InferenceResponse as CoreResponse

_END = object()


def _error_response(exc: BaseException) -> InferenceResponse:
    from llmserve.backends.python.errors import from_server_error

    if isinstance(exc, ServerError):
        return InferenceResponse(error=from_server_error(exc))
    return InferenceResponse(error=TritonError(f"{type(exc).__name__}: {exc}"))


def refusal(server: Any, request: CoreRequest) -> ServerError | None:
    """Why a non-decoupled BLS call cannot run, in Triton's words (None: it can)."""
    version = "" if request.model_version < 0 else str(request.model_version)
    try:
        model_decoupled = server.is_decoupled(request.model_name, version)
    except ServerError:
        # unknown, unloaded or loading: Triton's BLS checks readiness first, in these words
        return InternalError(f"Failed for execute the inference request. Model "
                             f"'{request.model_name}' is not ready.")
    except Exception:
        return None  # let the inference path report it
    if model_decoupled:
        return InvalidArgument(f"Model '{request.model_name}' is using the decoupled "
                               "transaction policy; call exec/async_exec with decoupled=True")
    return None


def start(server: Any, request: CoreRequest, put, decoupled: bool,
          reads: bool = False) -> Callable[[], None] | None:
    """Pump the server's responses for `request` into put(item); _END closes.

    reads: the caller will say when its model takes each response; then the returned
    function (when not None) is to be called for each one, so that a producer that
    merges its streamed responses (tensorrt_llm) knows the reader's pace."""
    start_bls = getattr(server, "start_bls", None)
    if start_bls is not None:  # inside a stub process
        return start_bls(request, put, decoupled)
    if not decoupled:
        refused = refusal(server, request)
        if refused is not None:
            put(refused)
            put(_END)
            return None
    handled, read = _start_direct(server, request, put, reads)
    if handled:
        return read

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
    return None


def _start_direct(server: Any, request: CoreRequest, put,
                  reads: bool) -> tuple[bool, Callable[[], None] | None]:
    """A call to a non-ensemble model goes in from this thread and its responses come
    from the thread that makes them: no event-loop hop either way (ensembles: not
    handled). Returns (handled, the sink's read() when reads)."""
    submit = getattr(server, "submit_direct", None)
    if submit is None:
        return False, None

    def deliver(resp: CoreResponse) -> None:
        put(resp)
        if resp.final:
            put(_END)

    try:
        sink = submit(request, deliver, track_reads=reads)
    except ServerError as exc:
        put(exc)
        put(_END)
        return True, None
    if sink is None:
        return False, None
    return True, sink.read if reads else None


def _convert(item: Any) -> InferenceResponse:
    if isinstance(item, BaseException):
        return _error_response(item)
    assert isinstance(item, CoreResponse)
    return InferenceResponse._from_core(item)


class ResponseIterator:
    """Responses of a decoupled BLS call, from exec or async_exec alike; walk them with
    `for` (blocking, as Triton's iterator does) or with `async for`. The final (possibly
    empty) response ends the walk; walking again after the end replays the responses.

    parents: cancellation tokens of the requests the calling execute serves. When all of
    them are cancelled (their clients went away) the call is cancelled and its walk ends
    quietly, so a model that never checks is_cancelled() (tensorrtllm_backend's own BLS)
    does not leave a generation running to max_tokens for nobody."""

    def __init__(self, server: Any, request: CoreRequest, loop: asyncio.AbstractEventLoop | None,
                 parents: tuple[CancellationToken, ...] = ()):
        self._cancel: CancellationToken = request.cancel
        self._lock = threading.Condition()
        self._buffer: collections.deque[Any] = collections.deque()
        self._responses: list[InferenceResponse] = []
        self._idx = 0
        self._done = False
        self._orphaned = False
        self._parents = parents
        self._orphan: Callable[[], None] | None = None  # (it holds self: cleared at the end)
        if parents:
            def orphan() -> None:
                if all(p.is_cancelled() for p in parents):
                    self._orphaned = True
                    self._cancel.cancel()

            self._orphan = orphan
            for parent in parents:
                parent.add_callback(orphan)
        # async_exec's caller waits on this event in its own loop instead of blocking it
        self._loop = loop
        self._arrived = asyncio.Event() if loop is not None else None
        self._read: Callable[[], None] | None = start(server, request, self._put, True,
                                                      reads=True)

    def _put(self, item: Any) -> None:
        with self._lock:
            self._buffer.append(item)
            self._lock.notify_all()
        if self._loop is not None and self._arrived is not None:
            try:
                self._loop.call_soon_threadsafe(self._arrived.set)
            except RuntimeError:  # the caller's loop is gone; `for` still works
                pass

    def cancel(self) -> None:
        if not self._done:
            self._cancel.cancel()

    def __iter__(self) -> ResponseIterator:
        self._rewind()
        return self

    def __next__(self) -> InferenceResponse:
        if self._done:
            return self._replay(StopIteration)
        with self._lock:
            while not self._buffer:
                self._lock.wait()
            item = self._buffer.popleft()
        return self._step(item, StopIteration)

    def __aiter__(self) -> ResponseIterator:
        self._rewind()
        return self

    async def __anext__(self) -> InferenceResponse:
        if self._done:
            return self._replay(StopAsyncIteration)
        while True:
            with self._lock:
                if self._buffer:
                    item = self._buffer.popleft()
                    break
            if self._arrived is not None and asyncio.get_running_loop() is self._loop:
                await self._arrived.wait()
                self._arrived.clear()
            else:  # an iterator of exec() walked from some event loop: wait off it
                await asyncio.get_running_loop().run_in_executor(None, self._wait_item)
        return self._step(item, StopAsyncIteration)

    def _wait_item(self) -> None:
        with self._lock:
            while not self._buffer:
                self._lock.wait()

    def _rewind(self) -> None:
        if self._done and self._idx >= len(self._responses):
            self._idx = 0

    def _replay(self, stop: type[Exception]) -> InferenceResponse:
        if self._idx < len(self._responses):
            self._idx += 1
            return self._responses[self._idx - 1]
        raise stop

    def _step(self, item: Any, stop: type[Exception]) -> InferenceResponse:
        if item is _END or self._orphaned:
            self._finish()
            raise stop
        if self._read is not None:
            self._read()
        response = _convert(item)
        self._responses.append(response)
        if isinstance(item, BaseException) or item.final:
            self._finish()
        return response

    def _finish(self) -> None:
        self._done = True
        self._idx = len(self._responses)
        # a finished call leaves its parents' tokens (a stream of calls piles up no
        # callbacks) and lets go of what would hold it in a cycle
        for parent in self._parents:
            parent.remove_callback(self._orphan)
        # (the reader pace is the call's sink, whose delivery holds this iterator)
        self._parents, self._orphan, self._read = (), None, None


def exec_sync(server: Any, request: CoreRequest) -> InferenceResponse:
    """One response for a non-decoupled BLS call (blocking)."""
    q: queue.Queue = queue.Queue()
    start(server, request, q.put, False)
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

    start(server, request, put, False)
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
