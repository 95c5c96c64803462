"""What a stub asks of the server, served there: BLS requests (run through the server's
inference path, as in-process, with the responses streamed back), model control, custom
metrics and log records.

Messages: ("bls", call, request, decoupled) answered by ("bls_resp", call, item, end)
messages, item ("r", response) or ("e", error), end True with the last one;
("bls_cancel", call); ("bls_read", [call, ...]): the model took a response of each
(a decoupled call's pace); ("call", call, what, *args) answered by a reply;
("metric_op", family, labels, op, value); ("log", logger name, level, text).
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from typing import Any

from llmserve.backends.python import bls, context
from llmserve.backends.python import pb_utils as server_pb_utils
from llmserve.backends.python.stub_link import Link
from llmserve.backends.python.stub_messages import (
    pack_bls_response,
    pack_error,
    unpack_bls_request,
)
from llmserve.core.errors import InternalError, ServerError
from llmserve.core.types import CancellationToken

log = logging.getLogger("llmserve.backends.python.stub")
# answered on the reader thread; the others may block (model control), so a pool runs them
_QUICK = {"metric_family", "metric", "metric_value"}


class StubServices:
    def __init__(self, server: Any, model_name: str, link: Link,
                 pool: concurrent.futures.Executor):
        self.server, self.model_name, self.link, self.pool = server, model_name, link, pool
        self._bls: dict[int, CancellationToken] = {}
        self._reads: dict[int, Any] = {}  # a decoupled call's ResponseSink.read
        self._lock = threading.Lock()

    def handle(self, message: tuple) -> None:
        kind = message[0]
        if kind == "bls":
            self._start_bls(*message[1:])
        elif kind == "bls_cancel":
            with self._lock:
                token = self._bls.get(message[1])
            if token is not None:
                token.cancel()
        elif kind == "bls_read":
            for call in message[1]:
                read = self._reads.get(call)
                if read is not None:
                    read()
        elif kind == "metric_op":
            self._metric_op(*message[1:])
        elif kind == "log":
            _, name, level, text = message
            logging.getLogger(name).log(level, "%s", text)
        elif kind == "call":
            _, call, what, *args = message
            if what in _QUICK:
                self._answer(call, what, args)
            else:
                self.pool.submit(self._answer, call, what, args)
        else:
            log.warning("model '%s': unknown message %r from a stub", self.model_name, kind)

    # -- BLS ---------------------------------------------------------------------------------
    def bls_pending(self) -> bool:
        return bool(self._bls)

    def cancel_all(self) -> None:
        """The stub is gone: its BLS requests stop."""
        with self._lock:
            tokens, self._bls = list(self._bls.values()), {}
        for token in tokens:
            token.cancel()

    def _start_bls(self, call: int, wire: tuple, decoupled: bool) -> None:
        request = unpack_bls_request(self.link, wire)
        with self._lock:
            self._bls[call] = request.cancel
        ended = False

        def put(item: Any) -> None:
            nonlocal ended
            if ended:
                return
            if item is bls._END:
                payload, end = None, True
            elif isinstance(item, BaseException):
                error = item if isinstance(item, ServerError) else InternalError(str(item))
                payload, end = ("e", pack_error(error)), True
            else:
                payload, end = ("r", pack_bls_response(self.link, item)), item.final
            if end:
                ended = True
                with self._lock:
                    self._bls.pop(call, None)
                    self._reads.pop(call, None)
            self.link.send(("bls_resp", call, payload, end))

        try:
            read = bls.start(self.server, request, put, decoupled, reads=decoupled)
        except ServerError as exc:
            put(exc)
            return
        if read is not None and not ended:
            with self._lock:
                self._reads[call] = read

    # -- calls ---------------------------------------------------------------------------------
    def _answer(self, call: int, what: str, args: list) -> None:
        token = context.enter(context.ModelContext(self.server, self.model_name))
        try:
            value = self._call(what, args)
        except Exception as exc:
            self.link.reply(call, None, (str(exc), "INTERNAL"))
        else:
            self.link.reply(call, value)
        finally:
            context.leave(token)

    def _call(self, what: str, args: list) -> Any:
        if what == "metric_family":
            server_pb_utils.MetricFamily(*args)
            return None
        if what == "metric":
            family, labels, buckets = args
            self._family(family).Metric(labels, buckets)
            return None
        if what == "metric_value":
            family, labels = args
            return self._family(family).Metric(labels).value()
        if what == "load_model":
            name, config, files = args
            server_pb_utils.load_model(name, config, files)
            return None
        if what == "unload_model":
            server_pb_utils.unload_model(*args)
            return None
        if what == "is_model_ready":
            return server_pb_utils.is_model_ready(*args)
        raise ValueError(f"unknown call '{what}'")

    def _family(self, name: str) -> Any:
        family = self.server.custom_metrics.families.get(name)
        if family is None:
            raise ValueError(f"no metric family '{name}'")
        return family

    def _metric_op(self, family: str, labels: dict, op: str, value: float) -> None:
        try:
            getattr(self._family(family).Metric(labels), op)(value)
        except Exception as exc:  # the stub checked it already; never fail the reader
            log.warning("model '%s': metric %s(%s) on '%s' failed: %s", self.model_name, op,
                        value, family, exc)
