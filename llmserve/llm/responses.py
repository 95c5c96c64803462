"""Hands Responses from the executor's loop thread to their consumers.

A response goes to the request's callback when one is registered (the asyncio bridge
uses call_soon_threadsafe), otherwise into a buffer that await_responses() drains.
RoutedResponses is the executor API's response half, shared by Executor and the engine
process proxy (llmserve/llm/engine_process/client.py).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable

from llmserve.core.errors import InvalidArgument
from llmserve.llm.request import Response

logger = logging.getLogger(__name__)

Callback = Callable[[Response], None]


class ResponseRouter:
    def __init__(self) -> None:
        # Callbacks run under this lock so a request's responses keep their order even
        # while a subscriber is being attached; they must be quick and non-blocking.
        self._cond = threading.Condition(threading.RLock())
        self._ready: dict[int, list[Response]] = {}
        self._callbacks: dict[int, Callback] = {}
        self._live: set[int] = set()  # ids whose final response was not yet handed out

    def register(self, request_id: int) -> None:
        with self._cond:
            self._live.add(request_id)

    def deliver(self, response: Response) -> None:
        rid = response.request_id
        with self._cond:
            callback = self._callbacks.get(rid)
            if callback is None:
                self._ready.setdefault(rid, []).append(response)
                self._cond.notify_all()
                return
            if response.is_final:
                del self._callbacks[rid]
                self._live.discard(rid)
            try:
                callback(response)
            except Exception:
                logger.exception("response callback of request %d failed", rid)

    def add_callback(self, request_id: int, callback: Callback) -> None:
        """Send request_id's responses (buffered ones first) to callback from now on."""
        with self._cond:
            self._check_known(request_id)
            for response in self._ready.pop(request_id, []):
                if response.is_final:
                    self._live.discard(request_id)
                callback(response)
            if request_id in self._live:
                self._callbacks[request_id] = callback

    def subscribe(self, request_id: int,
                  loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Queue[Response]:
        """An asyncio.Queue on loop (default: the running one) fed with the responses."""
        loop = loop or asyncio.get_running_loop()
        queue: asyncio.Queue[Response] = asyncio.Queue()

        def put(response: Response) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, response)

        self.add_callback(request_id, put)
        return queue

    def num_ready(self, request_id: int | None = None) -> int:
        with self._cond:
            if request_id is None:
                return sum(len(v) for v in self._ready.values())
            return len(self._ready.get(request_id, ()))

    def await_responses(self, ids: int | list[int] | None,
                        timeout_s: float | None) -> list[Response] | list[list[Response]]:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            if ids is None:
                self._wait(lambda: bool(self._ready), deadline)
                out = [r for rs in self._ready.values() for r in rs]
                self._ready.clear()
                self._forget_finals(out)
                return out
            if isinstance(ids, int):
                self._check_known(ids)
                self._wait(lambda: ids in self._ready, deadline)
                out = self._ready.pop(ids, [])
                self._forget_finals(out)
                return out
            for rid in ids:
                self._check_known(rid)
            self._wait(lambda: any(rid in self._ready for rid in ids), deadline)
            lists = [self._ready.pop(rid, []) for rid in ids]
            for rs in lists:
                self._forget_finals(rs)
            return lists

    def _wait(self, ready: Callable[[], bool], deadline: float | None) -> None:
        while not ready():
            if deadline is None:
                self._cond.wait()
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._cond.wait(remaining)

    def _check_known(self, request_id: int) -> None:
        if request_id not in self._live and request_id not in self._ready:
            raise InvalidArgument(
                f"ReqId {request_id} is unknown or has already been completed and its "
                "responses consumed"
            )

    def _forget_finals(self, responses: list[Response]) -> None:
        for r in responses:
            if r.is_final:
                self._live.discard(r.request_id)


def timeout_seconds(timeout: datetime.timedelta | float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, datetime.timedelta):
        return timeout.total_seconds()
    return float(timeout)


class RoutedResponses(ABC):
    """The response calls of the executor API over self._router (a ResponseRouter);
    the class using it provides cancel_request."""

    _router: ResponseRouter

    @abstractmethod
    def cancel_request(self, id: int) -> None: ...  # noqa: A002

    def await_responses(
        self,
        id: int | list[int] | datetime.timedelta | None = None,  # noqa: A002 (TRT-LLM name)
        timeout: datetime.timedelta | float | None = None,
    ) -> list[Response] | list[list[Response]]:
        """Responses ready for one id (list), several ids (list of lists, waits for any)
        or all requests (id None). Waits up to timeout (None: until one is ready)."""
        if isinstance(id, datetime.timedelta):
            id, timeout = None, id
        return self._router.await_responses(id, timeout_seconds(timeout))

    def get_num_responses_ready(self, id: int | None = None) -> int:  # noqa: A002
        return self._router.num_ready(id)

    def add_response_callback(self, request_id: int, callback: Callback) -> None:
        """Deliver request_id's responses to callback (on the executor thread; keep it
        quick) instead of buffering them for await_responses."""
        self._router.add_callback(request_id, callback)

    def subscribe(self, request_id: int,
                  loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Queue[Response]:
        """An asyncio.Queue (on loop, default the running one) fed with the responses."""
        return self._router.subscribe(request_id, loop)

    async def iter_responses(self, request_id: int) -> AsyncIterator[Response]:
        """Async iterator over a request's responses, ending after the final one.
        Leaving it early (break, aclose, task cancel) cancels the request."""
        queue = self.subscribe(request_id)
        final = False
        try:
            while not final:
                response = await queue.get()
                final = response.is_final
                yield response
        finally:
            if not final:
                self.cancel_request(request_id)
