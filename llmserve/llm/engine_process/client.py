"""EngineProcessExecutor: the Executor API, with the executor in an engine process.

Calls that need an answer (enqueue, stats, shutdown) send a message and wait for its
reply; cancels go one way. A receiver thread takes every message from the engine in
order: replies resolve their callers, a step's responses fan out through a
ResponseRouter exactly as the in-process Executor hands them out. When the engine
process exits unexpectedly every live request fails with a clear error and on_death
is called with it.
"""

from __future__ import annotations

import datetime
import itertools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import zmq

from llmserve.core.errors import InternalError, Unavailable
from llmserve.llm.config import ExecutorConfig, ModelType
from llmserve.llm.engine_process import messages as m
from llmserve.llm.engine_process.channel import WorkerProcess, describe_exit
from llmserve.llm.engine_thread import engine_num_threads
from llmserve.llm.request import Request, Response
from llmserve.llm.responses import ResponseRouter, RoutedResponses, timeout_seconds
from llmserve.llm.stats import IterationStats, KvCacheStats, RequestStatsPerIteration

logger = logging.getLogger(__name__)

WORKER_MODULE = "llmserve.llm.engine_process.worker"
_RUNNING, _STOPPING, _GONE = "running", "stopping", "gone"
_DRAIN_S = 0.05  # after the engine exits: how long to wait for messages still in flight


class _Call(Future):
    """A caller waiting for the reply to message `id`."""

    def __init__(self, call_id: int, client_ids: list) -> None:
        super().__init__()
        self.id = call_id
        self.client_ids = client_ids  # enqueue: the requests' client ids, in order


class EngineProcessExecutor(RoutedResponses):
    """Executor's public API; the executor itself runs in an engine process."""

    def __init__(self, model_path: str | Path | None,
                 model_type: ModelType = ModelType.DECODER_ONLY,
                 executor_config: ExecutorConfig | None = None, *, name: str = "llm",
                 on_death: Callable[[str], None] | None = None) -> None:
        """Start the engine process and load the model there (blocks until loaded;
        raises the engine's load error). on_death(reason) is called, on the receiver
        thread, if the process later exits without being shut down."""
        config = executor_config or ExecutorConfig()
        config.validate()
        self.config = config
        self.name = name
        self._on_death = on_death
        self._router = ResponseRouter()
        self._lock = threading.Lock()  # state, calls and the push socket
        self._calls: dict[int, _Call] = {}  # call id -> waiting caller
        self._call_ids = itertools.count(1)
        self._live: dict[int, int | None] = {}  # request id -> client id, until final
        self._state = _RUNNING
        self._exit_reason = ""
        init = m.Init(None if model_path is None else str(model_path), model_type, config)
        level = str(logging.getLogger().getEffectiveLevel())  # the server's, as a number
        self._proc = WorkerProcess(
            WORKER_MODULE, name, ["--log-level", level], files={m.INIT_FILE: m.encode(init)},
            env={"LLMSERVE_ENGINE_THREADS": str(engine_num_threads())})
        self._push, self._pull = self._proc.push, self._proc.pull
        try:
            self._await_ready()
        except BaseException:
            self._proc.stop(30)
            self._proc.close()
            raise
        self._receiver = threading.Thread(target=self._receive_loop, daemon=True,
                                          name=f"engine-{name}-receiver")
        self._receiver.start()

    @property
    def pid(self) -> int:
        """The engine process's id."""
        return self._proc.pid

    # -- start-up -------------------------------------------------------------------------

    def _await_ready(self) -> None:
        msg = self._first_message()
        if isinstance(msg, m.LoadFailed):
            raise m.to_exception(msg.error)
        if not isinstance(msg, m.Ready):
            code = self._proc.stop(30)
            raise InternalError(f"engine process for model '{self.name}' exited during the "
                                f"load ({describe_exit(code)})")
        info = msg.info
        self.vocab_size = info.vocab_size
        self.max_seq_len = info.max_seq_len
        self.max_batch_size = info.max_batch_size
        self.max_num_tokens = info.max_num_tokens
        self.tokens_per_block = info.tokens_per_block
        self.gc_frozen = info.gc_frozen

    def _first_message(self):
        """Ready or LoadFailed, or None when the process exited first."""
        poller = zmq.Poller()
        poller.register(self._pull, zmq.POLLIN)
        poller.register(self._proc.alive_fd, zmq.POLLIN)
        while True:
            events = dict(poller.poll())
            if self._pull in events:
                return m.decode(self._pull.recv())
            if self._proc.alive_fd in events:
                return m.decode(self._pull.recv()) if self._pull.poll(_DRAIN_S * 1000) else None

    # -- enqueue --------------------------------------------------------------------------

    def can_enqueue_requests(self) -> bool:
        return self._state == _RUNNING

    def enqueue_request(self, request: Request) -> int:
        return self.enqueue_requests([request])[0]

    def enqueue_requests(self, requests: list[Request]) -> list[int]:
        """Queue the requests in the engine; raises what the executor raised there
        (InvalidArgument, Unavailable for a full queue, ...)."""
        if not requests:
            return []
        reply: m.EnqueueReply = self._call(
            lambda call: m.EnqueueRequests(call, requests), accepting=True,
            client_ids=[r.client_id for r in requests])
        if reply.error is not None:
            raise m.to_exception(reply.error)
        return reply.ids

    # -- control --------------------------------------------------------------------------

    def cancel_request(self, id: int) -> None:  # noqa: A002
        """Stop the request at the engine's next step; it gets a final CANCELLED response."""
        with self._lock:
            if self._state != _GONE:
                try:
                    self._send(m.CancelRequest(id))
                except Unavailable:
                    pass  # the engine is gone: the receiver fails the request

    def get_latest_iteration_stats(self) -> list[IterationStats]:
        return self._query("get_latest_iteration_stats", [])

    def get_latest_request_stats(self) -> list[RequestStatsPerIteration]:
        return self._query("get_latest_request_stats", [])

    def get_kv_cache_stats(self) -> KvCacheStats:
        return self._query("get_kv_cache_stats")

    def get_current_stats(self) -> IterationStats:
        return self._query("get_current_stats")

    def shutdown(self, wait_for_requests: bool = False,
                 timeout: datetime.timedelta | float | None = None) -> None:
        """As Executor.shutdown; then the engine process exits."""
        with self._lock:
            future = None
            if self._state == _RUNNING:
                self._state = _STOPPING
                future = self._register_call()
                try:
                    self._send(m.Shutdown(future.id, wait_for_requests,
                                          timeout_seconds(timeout)))
                except Unavailable:
                    pass  # already gone: the receiver fails the call and the requests
        if future is not None:
            try:
                future.result()
            except Unavailable:
                pass  # it exited meanwhile: the receiver answered every request
        if threading.current_thread() is not self._receiver:
            self._receiver.join()

    def __enter__(self) -> EngineProcessExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # -- calls ----------------------------------------------------------------------------

    def _register_call(self, client_ids: list | None = None) -> _Call:
        """A future for the reply, with self._lock held."""
        call = _Call(next(self._call_ids), client_ids or [])
        self._calls[call.id] = call
        return call

    def _send(self, message) -> None:
        """With self._lock held."""
        try:
            self._push.send(m.encode(message), zmq.NOBLOCK)
        except zmq.Again:  # no engine connected any more
            raise Unavailable(self._gone_message()) from None

    def _call(self, make: Callable[[int], object], accepting: bool = False,
              client_ids: list | None = None):
        """Send make(call id) and wait for its reply (Unavailable if the engine exits)."""
        with self._lock:
            if self._state == _GONE or (accepting and self._state != _RUNNING):
                raise Unavailable(self._gone_message() if self._state == _GONE else
                                  "Executor is shut down and does not accept requests")
            future = self._register_call(client_ids)
            try:
                self._send(make(future.id))
            except Unavailable:
                self._calls.pop(future.id, None)
                raise
        return future.result()

    def _query(self, method: str, when_gone=None):
        """The engine executor's method(); when_gone (if not None) once it has exited."""
        try:
            reply: m.Reply = self._call(lambda call: m.Query(call, method))
        except Unavailable:
            if when_gone is None:
                raise
            return when_gone
        if reply.error is not None:
            raise m.to_exception(reply.error)
        return reply.value

    def _gone_message(self) -> str:
        return self._exit_reason or f"engine process for model '{self.name}' is not running"

    # -- the receiver thread --------------------------------------------------------------

    def _receive_loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._pull, zmq.POLLIN)
        poller.register(self._proc.alive_fd, zmq.POLLIN)
        try:
            while True:
                events = dict(poller.poll())
                if self._pull in events:
                    self._drain()
                if self._proc.alive_fd in events:
                    while self._pull.poll(_DRAIN_S * 1000):  # what it sent before exiting
                        self._drain()
                    break
        except Exception:
            logger.exception("engine '%s': receiving from the engine process failed", self.name)
            self._proc.proc.kill()
        self._engine_exited()

    def _drain(self) -> None:
        while True:
            try:
                frame = self._pull.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._handle(m.decode(frame))

    def _handle(self, msg) -> None:
        if isinstance(msg, m.StepOutputs):
            router, live = self._router, self._live
            for response in msg.responses:
                if response.is_final:
                    live.pop(response.request_id, None)
                router.deliver(response)
            return
        with self._lock:
            future = self._calls.pop(msg.call, None)
        if isinstance(msg, m.EnqueueReply):
            clients = future.client_ids if future is not None else []
            for i, rid in enumerate(msg.ids):
                self._router.register(rid)  # before any of its responses is handled
                self._live[rid] = clients[i] if i < len(clients) else None
        if future is not None:
            future.set_result(msg)

    def _engine_exited(self) -> None:
        code = self._proc.wait(30)
        with self._lock:
            expected = self._state == _STOPPING
            self._state = _GONE
            reason = (f"engine process for model '{self.name}' "
                      + ("stopped" if expected else f"died ({describe_exit(code)})"))
            self._exit_reason = reason
            calls, self._calls = self._calls, {}
        live, self._live = self._live, {}
        if not expected:
            logger.error("%s; failing %d request(s)", reason, len(live))
        for future in calls.values():
            future.set_exception(Unavailable(reason))
        for rid, client in live.items():
            self._router.deliver(Response(rid, error_msg=reason, client_id=client))
        self._release()
        if not expected and self._on_death is not None:
            try:
                self._on_death(reason)
            except Exception:
                logger.exception("engine '%s': the on_death callback failed", self.name)

    def _release(self) -> None:
        with self._lock:  # no caller may be sending while the sockets close
            self._proc.stop(30)
            self._proc.close()
