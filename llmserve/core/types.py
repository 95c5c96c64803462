"""Request and response types that cross from the frontends into the server core.

Frontends build an InferenceRequest, hand it to InferenceServer.infer(), and read
InferenceResponse objects back. Tensors are numpy arrays; BYTES tensors are object
arrays of `bytes`; BF16 tensors hold float32 values (numpy has no bfloat16) and are
converted at the wire edge.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmserve.core.errors import ServerError


@dataclass(slots=True)
class Tensor:
    name: str
    datatype: str  # API name: FP32, BYTES, ...
    data: np.ndarray  # already shaped

    @property
    def shape(self) -> list[int]:
        return list(self.data.shape)


@dataclass(slots=True)
class RequestedOutput:
    name: str
    binary_data: bool = False  # HTTP only: return in the binary section
    classification: int = 0  # top-k classification extension, 0 = off
    parameters: dict[str, Any] = field(default_factory=dict)


class CancellationToken:
    """Set by a frontend when the client goes away; read by schedulers and backends."""

    # a flag, not a threading.Event: nothing waits on it, and one is made per request
    __slots__ = ("_cancelled", "_callbacks", "_lock")

    def __init__(self) -> None:
        self._cancelled = False
        self._callbacks: list = []
        self._lock = threading.Lock()

    def cancel(self) -> None:
        with self._lock:
            if self._cancelled:
                return
            self._cancelled = True
            callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            cb()

    def is_cancelled(self) -> bool:
        return self._cancelled

    def add_callback(self, cb) -> None:
        """Run cb() once on cancel (at once if already cancelled)."""
        with self._lock:
            if not self._cancelled:
                self._callbacks.append(cb)
                return
        cb()

    def remove_callback(self, cb) -> None:
        """Forget cb (its work finished): a long stream must not pile up callbacks."""
        with self._lock:
            if cb in self._callbacks:
                self._callbacks.remove(cb)

    def clear_callbacks(self) -> None:
        """Forget every callback: the request is answered, so cancelling it can do nothing
        more. The callbacks hold its queue entry and backend state, which hold the
        request: left here they would make a reference cycle per request for the
        garbage collector to find."""
        with self._lock:
            self._callbacks = []


@dataclass(slots=True)
class InferenceRequest:
    model_name: str
    inputs: dict[str, Tensor]
    model_version: int = -1  # -1: pick by the model's version policy (highest ready)
    id: str = ""
    requested_outputs: list[RequestedOutput] | None = None  # None: all outputs
    parameters: dict[str, Any] = field(default_factory=dict)
    correlation_id: int | str = 0
    flags: int = 0  # sequence START=1 / END=2
    priority: int = 0
    timeout_us: int = 0  # 0: none; queue timeout per the model's queue policy
    cancel: CancellationToken = field(default_factory=CancellationToken)
    arrival_ns: int = 0


@dataclass(slots=True)
class InferenceResponse:
    model_name: str
    model_version: int
    id: str = ""
    outputs: list[Tensor] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    error: ServerError | None = None
    final: bool = True  # decoupled streams: False until the last response

    @property
    def flag_only(self) -> bool:
        """A decoupled stream's bare final flag: no outputs, no error, nothing to send."""
        return self.final and not self.outputs and self.error is None

    def output(self, name: str) -> Tensor | None:
        for t in self.outputs:
            if t.name == name:
                return t
        return None
