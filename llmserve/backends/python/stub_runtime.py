"""pb_utils inside a stub process: the requests execute() receives, their response
senders, BLS calls, custom metrics and model control, each reaching the server over
the stub's Link. The public classes are pb_utils' own (or small subclasses of them), so
a model sees the same objects as in-process.
"""

from __future__ import annotations

import itertools
import logging
import threading
from typing import Any

from llmserve.backends.python import bls, context
from llmserve.backends.python.errors import TritonModelException, to_server_error
from llmserve.backends.python.metrics import Metric, MetricFamily
from llmserve.backends.python.request import InferenceRequest
from llmserve.backends.python.response import InferenceResponse, InferenceResponseSender
from llmserve.backends.python.stub_link import Link, RemoteError
from llmserve.backends.python.stub_messages import (
    pack_bls_request,
    pack_error,
    unpack_bls_response,
    unpack_error,
)
from llmserve.backends.python.tensor import Tensor
from llmserve.core.errors import InternalError
from llmserve.core.types import CancellationToken
from llmserve.core.types import InferenceRequest as CoreRequest


class RequestState:
    """The stub's side of one request the server handed to execute."""

    __slots__ = ("key", "decoupled", "cancel", "sender", "final_sent")

    def __init__(self, key: int, decoupled: bool):
        self.key, self.decoupled = key, decoupled
        self.cancel = CancellationToken()  # the server's cancel messages set it
        self.sender: StubResponseSender | None = None
        self.final_sent = False


def pack_response(link: Link, response: InferenceResponse | None) -> tuple | None:
    """A model's response in wire form; a tensor that cannot travel becomes its error."""
    if response is None:
        return None
    params = response._parameters or None
    if response.has_error():
        return [], pack_error(to_server_error(response.error())), params
    try:
        outputs = [link.pack(t.name(), t.datatype(), t._array) for t in response.output_tensors()]
    except Exception as exc:
        return [], pack_error(InternalError(f"invalid output tensor: {exc}")), params
    return outputs, None, params


class StubServer:
    """What pb_utils finds as "the server" inside a stub (context.server_or_raise)."""

    def __init__(self, link: Link):
        self.link = link
        self.requests: dict[int, RequestState] = {}
        self._bls: dict[int, Any] = {}
        self._bls_ids = itertools.count(1)
        self._lock = threading.Lock()
        self.custom_metrics = RemoteMetricRegistry(link)
        # called before a BLS call: its responses need a thread reading the link
        self.before_wait: Any = None

    # -- responses ------------------------------------------------------------------------
    def send_response(self, state: RequestState, response: InferenceResponse | None,
                      final: bool) -> None:
        packed = pack_response(self.link, response)
        if final:
            state.final_sent = True
            # the sender points back at the state: unlinked, both are freed with the
            # request (a sender asked for later is a new one, equally closed)
            state.sender = None
            self.requests.pop(state.key, None)
        self.link.send(("resp", state.key, packed, final))

    # -- BLS --------------------------------------------------------------------------------
    def start_bls(self, request: CoreRequest, put: Any, decoupled: bool) -> Any:
        """bls.start's way to the real server: it runs the request there and streams the
        responses back (bls_response). Returns what to call when the model takes one of
        its responses (a decoupled call's reader pace, told to the server)."""
        with self._lock:
            call = next(self._bls_ids)
            self._bls[call] = put
        if self.before_wait is not None:
            self.before_wait()
        self.link.send(("bls", call, pack_bls_request(self.link, request), decoupled))
        request.cancel.add_callback(lambda: self.link.send(("bls_cancel", call)))
        return (lambda: self.link.note_read(call)) if decoupled else None

    def bls_response(self, call: int, item: tuple | None, end: bool) -> None:
        with self._lock:
            put = self._bls.pop(call, None) if end else self._bls.get(call)
        if put is None:
            return
        if item is not None:
            kind, wire = item
            put(unpack_bls_response(self.link, wire) if kind == "r" else unpack_error(wire))
        if end:
            put(bls._END)

    # -- model control ------------------------------------------------------------------------
    def remote(self, what: str, *args: Any) -> Any:
        try:
            return self.link.call("call", what, *args)
        except RemoteError as exc:
            raise TritonModelException(exc.message) from None


class StubRequest(InferenceRequest):
    """A request given to execute inside a stub."""

    @classmethod
    def from_wire(cls, link: Link, wire: tuple, state: RequestState) -> StubRequest:
        (_key, model, inputs, names, rid, corr, version, flags, timeout, params, _c) = wire
        tensors = [Tensor(name, data, _datatype=dt) for name, dt, data in map(link.unpack, inputs)]
        req = cls(model, tensors, names, rid, corr, version, flags, timeout, None, None)
        req._parameters = params
        req._state = state
        return req

    def is_cancelled(self) -> bool:
        return self._state.cancel.is_cancelled()

    def set_release_flags(self, flags: int) -> None:
        self._release_flags = int(flags)

    def get_response_sender(self) -> InferenceResponseSender:
        state = self._state
        if state.sender is None:  # one sender per request, kept across reschedules
            state.sender = StubResponseSender(state)
        return state.sender


class StubResponseSender(InferenceResponseSender):
    def __init__(self, state: RequestState):
        super().__init__(None, state.decoupled)
        self._state = state

    def _sink_closed(self) -> bool:
        return self._state.final_sent

    def _deliver(self, response: InferenceResponse | None, final: bool) -> None:
        _stub_server().send_response(self._state, response, final)

    def is_cancelled(self) -> bool:
        return self._state.cancel.is_cancelled()


class StubSlot:
    """A request of an executed batch: its outcome goes back with the batch's done message."""

    __slots__ = ("state", "outcomes", "index")

    def __init__(self, state: RequestState, outcomes: list, index: int):
        self.state, self.outcomes, self.index = state, outcomes, index

    @property
    def closed(self) -> bool:
        return self.state.final_sent

    @property
    def has_sender(self) -> bool:
        return self.state.sender is not None

    def fail(self, error: Any) -> None:
        self.state.final_sent = True
        self.outcomes[self.index] = ("e", pack_error(error))

    def respond(self, response: InferenceResponse) -> None:
        self.state.final_sent = True
        self.outcomes[self.index] = ("r", pack_response(_stub_server().link, response))

    def reschedule(self) -> None:
        self.outcomes[self.index] = ("s",)


def _stub_server() -> StubServer:
    server = context.server_or_raise("pb_utils")
    assert isinstance(server, StubServer)
    return server


# -- custom metrics: kept by the server, created and updated from the stub -------------------
class RemoteMetricRegistry:
    """MetricFamily's registry inside a stub: families are created (and checked) in the
    server; the stub keeps its own objects so that re-creating one returns it."""

    def __init__(self, link: Link):
        self.link = link
        self._families: dict[str, MetricFamily] = {}

    def family(self, name: str, description: str, kind: int) -> MetricFamily | None:
        try:
            self.link.call("call", "metric_family", name, description, kind)
        except RemoteError as exc:
            raise TritonModelException(exc.message) from None
        return self._families.get(name)

    def add(self, family: MetricFamily) -> None:
        self._families.setdefault(family._name, family)


class RemoteMetric(Metric):
    def __init__(self, family: MetricFamily, labels: dict[str, str], buckets: list[float] | None):
        super().__init__(family, labels, buckets)  # checks the arguments as the server will
        _stub_server().remote("metric", family._name, labels, buckets)

    def _forward(self, op: str, value: float) -> None:
        _stub_server().link.send(("metric_op", self._family._name, self._labels, op, value))

    def increment(self, value: float) -> None:
        super().increment(value)
        self._forward("increment", value)

    def set(self, value: float) -> None:
        super().set(value)
        self._forward("set", value)

    def observe(self, value: float) -> None:
        super().observe(value)
        self._forward("observe", value)

    def value(self) -> float:
        super().value()  # raises for histograms, as in-process
        # the server's value: several instances (stubs) may update one metric
        return float(_stub_server().remote("metric_value", self._family._name, self._labels))


class RemoteMetricFamily(MetricFamily):
    _metric_class = RemoteMetric


# -- model control ------------------------------------------------------------------------------
def load_model(model_name: str, config: str = "", files: dict[str, bytes] | None = None) -> None:
    """Load (or reload) a model; `config` a JSON override, `files` "file:<path>" -> bytes."""
    _stub_server().remote("load_model", model_name, config, files)


def unload_model(model_name: str, unload_dependents: bool = False) -> None:
    _stub_server().remote("unload_model", model_name, unload_dependents)


def is_model_ready(model_name: str, model_version: str = "") -> bool:
    return bool(_stub_server().remote("is_model_ready", model_name, str(model_version)))


class ForwardingLogHandler(logging.Handler):
    """Sends the stub's log records to the server's log, under the same logger names."""

    def __init__(self, link: Link):
        super().__init__()
        self.link = link

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            self.link.send(("log", record.name, record.levelno, text))
        except Exception:
            self.handleError(record)
