"""pb_utils.InferenceResponse and InferenceResponseSender, plus the conversion of a
model's response into the server's response."""

from __future__ import annotations

import json
import threading
from typing import Any

from llmserve.backends.python.errors import TritonError, TritonModelException, to_server_error
from llmserve.backends.python.tensor import Tensor
from llmserve.core.errors import InternalError, ServerError
from llmserve.core.types import InferenceResponse as CoreResponse
from llmserve.scheduling.request import SchedRequest

TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1


def _params_dict(parameters: Any) -> dict:
    if parameters is None or parameters == "":
        return {}
    if isinstance(parameters, str):
        value = json.loads(parameters)
        if not isinstance(value, dict):
            raise TritonModelException("parameters must be a JSON object")
        return value
    if isinstance(parameters, dict):
        for k, v in parameters.items():
            if not isinstance(k, str) or not isinstance(v, (bool, int, float, str)):
                raise TritonModelException(
                    "parameters keys must be strings and values bool, int, float or str"
                )
        return dict(parameters)
    raise TritonModelException("parameters must be a dict or a JSON string")


class InferenceResponse:
    def __init__(self, output_tensors: list[Tensor] | None = None, error: TritonError | None = None,
                 parameters: Any = None):
        if output_tensors is None:
            output_tensors = []
        if not isinstance(output_tensors, (list, tuple)):
            raise TritonModelException("output_tensors must be a list of pb_utils.Tensor")
        for t in output_tensors:
            if not isinstance(t, Tensor):
                raise TritonModelException("output_tensors must be a list of pb_utils.Tensor")
        if error is not None and not isinstance(error, TritonError):
            error = TritonError(str(error))
        self._outputs = list(output_tensors)
        self._error = error
        self._parameters = _params_dict(parameters)

    def output_tensors(self) -> list[Tensor]:
        return list(self._outputs)

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def parameters(self) -> str:
        return json.dumps(self._parameters)

    @classmethod
    def _from_core(cls, resp: CoreResponse) -> InferenceResponse:
        from llmserve.backends.python.errors import from_server_error

        error = from_server_error(resp.error) if resp.error is not None else None
        outputs = [Tensor._from_core(t) for t in resp.outputs] if error is None else []
        return cls(outputs, error, dict(resp.parameters))


def deliver(sreq: SchedRequest, response: InferenceResponse | None, final: bool) -> bool:
    """Send a model's response for `sreq`; conversion problems fail the request."""
    if response is None:
        return sreq.respond(final=final)
    if response.has_error():
        return sreq.respond(error=to_server_error(response.error()), final=final,
                            parameters=response._parameters)
    try:
        outputs = [t._to_core() for t in response.output_tensors()]
    except ServerError as exc:
        return sreq.fail(exc)
    except Exception as exc:  # a tensor we cannot turn into a wire tensor
        return sreq.fail(InternalError(f"invalid output tensor: {exc}"))
    return sreq.respond(outputs, final=final, parameters=response._parameters)


class InferenceResponseSender:
    """Sends responses for one request, from execute or any other thread, until FINAL.
    (The stub process's sender reaches the server through _sink_closed and _deliver.)"""

    def __init__(self, sreq: SchedRequest, decoupled: bool):
        self._sreq = sreq
        self._decoupled = decoupled
        self._lock = threading.Lock()
        self._sent = 0
        self._closed = False
        self._held: InferenceResponse | None = None  # non-decoupled: waits for FINAL

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        final = bool(flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        if response is None and not final:
            raise TritonModelException(
                "Inference Response object must be provided when the response flags is not "
                "TRITONSERVER_RESPONSE_COMPLETE_FINAL"
            )
        if response is not None and not isinstance(response, InferenceResponse):
            raise TritonModelException("send() expects a pb_utils.InferenceResponse")
        with self._lock:
            if self._closed or self._sink_closed():
                raise TritonModelException("Unable to send response. Response sender has been closed.")
            if not self._decoupled and response is not None and self._sent >= 1:
                raise TritonModelException(
                    "Unable to send response. Non-decoupled model cannot send more than one response."
                )
            if response is not None:
                self._sent += 1
            if final:
                self._closed = True
            if not self._decoupled:
                # a non-decoupled request gets exactly one response: hold it until FINAL
                if not final:
                    self._held = response
                    return
                response = response if response is not None else self._held
                self._held = None
        self._deliver(response, final)

    def _sink_closed(self) -> bool:
        return self._sreq.sink.closed

    def _deliver(self, response: InferenceResponse | None, final: bool) -> None:
        deliver(self._sreq, response, final)
        if final:  # the request's state points back at this sender: unlinked, both are
            self._sreq.backend_state.pop("sender", None)  # freed with the request

    def is_cancelled(self) -> bool:
        return self._sreq.is_cancelled()

    @property
    def closed(self) -> bool:
        return self._closed
