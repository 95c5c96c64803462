"""A request inside the server: validated inputs, queue bookkeeping and its response sink.

The sink is the one way responses travel back to whoever submitted the request (the
asyncio consumer of InferenceServer.infer, or a BLS caller on another thread).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llmserve.core.errors import ServerError
from llmserve.core.types import InferenceRequest, InferenceResponse, Tensor

_SEQ = itertools.count()


class ResponseSink:
    """Thread-safe delivery of responses; remembers whether the final one went out.

    A consumer that reads responses from a queue may say so (`track_reads`, then `read`
    for each one it takes): `unread` then counts the responses delivered and not yet
    taken, and a producer able to merge its streamed responses (the tensorrt_llm backend)
    holds new tokens back while the consumer is behind (`behind`) and sends them as one
    response when it catches up, as vLLM's output collector merges deltas for a slow
    reader. A consumer that never says so is never treated as behind."""

    def __init__(self, deliver: Callable[[InferenceResponse], None]):
        self._deliver = deliver
        self._lock = threading.Lock()
        self.closed = False
        self.count = 0
        self.failed = False
        self._on_final: list[Callable[[InferenceResponse], None]] = []
        self.tracks_reads = False
        self.unread = 0
        self._drained: Callable[[], None] | None = None

    def add_final_callback(self, cb: Callable[[InferenceResponse], None]) -> None:
        self._on_final.append(cb)

    def track_reads(self) -> None:
        """The consumer will call read() for every response it takes."""
        self.tracks_reads = True

    def behind(self, drained: Callable[[], None]) -> bool:
        """True when the consumer has not taken every delivered response yet; drained()
        is then called once, on the consumer's thread, when it has."""
        with self._lock:
            if not self.tracks_reads or self.unread == 0 or self.closed:
                return False
            self._drained = drained
            return True

    def read(self) -> None:
        """The consumer took one delivered response."""
        with self._lock:
            self.unread -= 1
            drained = self._drained if self.unread <= 0 else None
            if drained is not None:
                self._drained = None
        if drained is not None:
            drained()

    def send(self, response: InferenceResponse) -> bool:
        """Deliver one response; returns False (and drops it) once the final was sent."""
        with self._lock:
            if self.closed:
                return False
            self.count += 1
            self.unread += 1
            if response.error is not None:
                self.failed = True
            on_final: list[Callable[[InferenceResponse], None]] | tuple = ()
            if response.final:
                self.closed = True
                # dropped once run (as is a producer's pending drained()): they hold
                # the request, which holds this sink
                on_final, self._on_final = self._on_final, []
                self._drained = None
        for cb in on_final:  # bookkeeping first: the consumer may look at stats at once
            cb(response)
        self._deliver(response)
        return True


@dataclass(eq=False)
class SchedRequest:
    """One client (or BLS) request as the schedulers and backends see it."""

    request: InferenceRequest
    inputs: dict[str, Tensor]  # validated, reshaped to what the backend expects
    batch_size: int  # size of the batch dimension (1 when the model does not batch)
    output_names: list[str]  # outputs the client asked for (all when it named none)
    sink: ResponseSink
    priority_level: int = 0
    timeout_ns: int = 0  # 0: no queue timeout
    timeout_reject: bool = True  # queue policy timeout_action REJECT (else DELAY)
    enqueue_ns: int = 0
    seq: int = field(default_factory=lambda: next(_SEQ))
    delayed: bool = False
    reschedule_count: int = 0
    requeue: Callable[[SchedRequest], None] | None = None
    backend_state: dict[str, Any] = field(default_factory=dict)
    model_version: int = -1
    # applied to every response's outputs: filter to requested, reshape back to client dims
    output_transform: Callable[[list[Tensor]], list[Tensor]] | None = None
    # sequence batcher: a padding request for an idle slot (its responses are dropped),
    # and the implicit state (SequenceStates) the backend updates from the outputs
    null_request: bool = False
    sequence_states: Any = None

    @property
    def model_name(self) -> str:
        return self.request.model_name

    def is_cancelled(self) -> bool:
        return self.request.cancel.is_cancelled()

    def expired(self, now_ns: int) -> bool:
        return self.timeout_ns > 0 and now_ns - self.enqueue_ns >= self.timeout_ns

    def respond(self, outputs: list[Tensor] | None = None, *, error: ServerError | None = None,
                final: bool = True, parameters: dict[str, Any] | None = None) -> bool:
        outs = list(outputs or [])
        if error is None and outs and self.output_transform is not None:
            try:
                outs = self.output_transform(outs)
            except ServerError as exc:
                outs, error = [], exc
        resp = InferenceResponse(
            model_name=self.request.model_name,
            model_version=self.model_version,
            id=self.request.id,
            outputs=outs if error is None else [],
            parameters=dict(parameters or {}),
            error=error,
            final=final,
        )
        return self.sink.send(resp)

    def fail(self, error: ServerError) -> bool:
        return self.respond(error=error, final=True)


def now_ns() -> int:
    return time.monotonic_ns()
