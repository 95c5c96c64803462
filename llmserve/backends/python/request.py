"""pb_utils.InferenceRequest: the requests execute() receives, and the ones a model
builds itself for BLS (exec / async_exec)."""

from __future__ import annotations

import json
from typing import Any

from llmserve.backends.python import bls, context
from llmserve.backends.python.errors import TritonModelException
from llmserve.backends.python.response import (
    InferenceResponseSender,
    _params_dict,
)
from llmserve.backends.python.tensor import Tensor
from llmserve.core.types import CancellationToken, RequestedOutput
from llmserve.core.types import InferenceRequest as CoreRequest
from llmserve.scheduling.request import SchedRequest

TRITONSERVER_REQUEST_RELEASE_ALL = 1
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2


class PreferredMemory:
    """Accepted for compatibility; llmserve keeps BLS tensors in host memory."""

    def __init__(self, preferred_memory_type: int = 0, preferred_device_id: int = 0):
        self.preferred_memory_type = preferred_memory_type
        self.preferred_device_id = preferred_device_id


TRITONSERVER_MEMORY_CPU = 0
TRITONSERVER_MEMORY_GPU = 2


class InferenceRequest:
    def __init__(self, model_name: str, inputs: list[Tensor] | None = None,
                 requested_output_names: list[str] | None = None, request_id: str = "",
                 correlation_id: int | str = 0, model_version: int = -1, flags: int = 0,
                 timeout: int = 0, preferred_memory: PreferredMemory | None = None,
                 parameters: Any = None, trace: Any = None):
        if inputs is None:
            raise TypeError("InferenceRequest() missing required argument 'inputs'")
        for t in inputs:
            if not isinstance(t, Tensor):
                raise TritonModelException("inputs must be a list of pb_utils.Tensor")
        self._model_name = _as_str(model_name, "model_name")
        self._inputs = list(inputs)
        self._requested = [_as_str(n, "requested_output_names") for n in requested_output_names or []]
        self._request_id = _as_str(request_id, "request_id")
        self._correlation_id = correlation_id
        self._model_version = int(model_version)
        self._flags = int(flags)
        self._timeout = int(timeout)
        self._preferred_memory = preferred_memory or PreferredMemory()
        self._parameters = _params_dict(parameters)
        self._release_flags = TRITONSERVER_REQUEST_RELEASE_ALL
        self._sreq: SchedRequest | None = None
        self._sender: InferenceResponseSender | None = None
        self._cancel = CancellationToken()

    # -- accessors ------------------------------------------------------------------------
    def inputs(self) -> list[Tensor]:
        return list(self._inputs)

    def model_name(self) -> str:
        return self._model_name

    def request_id(self) -> str:
        return self._request_id

    def correlation_id(self) -> int | str:
        return self._correlation_id

    def flags(self) -> int:
        return self._flags

    def set_flags(self, flags: int) -> None:
        self._flags = int(flags)

    def timeout(self) -> int:
        return self._timeout

    def parameters(self) -> str:
        return json.dumps(self._parameters)

    def requested_output_names(self) -> list[str]:
        return list(self._requested)

    def is_cancelled(self) -> bool:
        if self._sreq is not None:
            return self._sreq.is_cancelled()
        return self._cancel.is_cancelled()

    def set_release_flags(self, flags: int) -> None:
        if self._sreq is None:
            raise TritonModelException("release flags can only be set on requests given to execute")
        self._release_flags = int(flags)

    def release_flags(self) -> int:
        return self._release_flags

    def get_response_sender(self) -> InferenceResponseSender:
        if self._sreq is None:
            raise TritonModelException("only requests given to execute have a response sender")
        if self._sender is None:
            sender = self._sreq.backend_state.get("sender")
            if sender is None:  # one sender per request, kept across reschedules
                sender = InferenceResponseSender(self._sreq, self._sreq.backend_state["decoupled"])
                self._sreq.backend_state["sender"] = sender
            self._sender = sender
        return self._sender

    # -- BLS ------------------------------------------------------------------------------
    def _core_request(self) -> CoreRequest:
        inputs = {}
        for t in self._inputs:
            inputs[t.name()] = t._to_core()
        return CoreRequest(
            model_name=self._model_name,
            inputs=inputs,
            model_version=self._model_version,
            id=self._request_id,
            requested_outputs=[RequestedOutput(n) for n in self._requested] or None,
            parameters=dict(self._parameters),
            correlation_id=self._correlation_id,
            flags=self._flags,
            timeout_us=self._timeout,
            cancel=self._cancel,
        )

    def exec(self, decoupled: bool = False) -> Any:
        ctx = context.require_execute("BLS exec")
        if decoupled:
            return bls.ResponseIterator(ctx.server, self._core_request(), None, ctx.parents)
        return bls.exec_sync(ctx.server, self._core_request())

    def async_exec(self, decoupled: bool = False) -> Any:
        ctx = context.require_execute("BLS async_exec")
        core = self._core_request()

        async def run() -> Any:
            import asyncio

            if decoupled:
                return bls.ResponseIterator(ctx.server, core, asyncio.get_running_loop(),
                                            ctx.parents)
            return await bls.exec_async(ctx.server, core)

        return run()

    # -- server side ----------------------------------------------------------------------
    @classmethod
    def _from_sched(cls, sreq: SchedRequest) -> InferenceRequest:
        r = sreq.request
        inputs = [Tensor._from_core(t) for t in sreq.inputs.values()]
        req = cls(r.model_name, inputs, list(sreq.output_names), r.id, r.correlation_id,
                  r.model_version, r.flags, r.timeout_us, None, None)
        req._parameters = dict(r.parameters)
        req._sreq = sreq
        req._cancel = r.cancel
        return req


def _as_str(value: Any, what: str) -> str:
    """Triton's binding takes str or bytes (numpy's str_/bytes_ included) where it wants a
    string, so a name read straight out of a BYTES tensor works."""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TypeError(f"InferenceRequest {what} is not valid UTF-8: {value!r}") from exc
    raise TypeError(f"InferenceRequest {what} must be a str or bytes, not {type(value).__name__}")

