"""What a Python model's execute returned (or raised) becomes one outcome per request:
Triton's response-list rule, decoupled mode's None, rescheduling and error mapping.
Shared by the in-process backend and the stub process, each with its own Slot."""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from llmserve.backends.python.errors import TritonError, to_server_error
from llmserve.backends.python.request import TRITONSERVER_REQUEST_RELEASE_RESCHEDULE
from llmserve.backends.python.response import InferenceResponse
from llmserve.core.errors import InternalError, ServerError

log = logging.getLogger("llmserve.backends.python.backend")


class Slot(Protocol):
    """One request of an executed batch, as the rules see it."""

    @property
    def closed(self) -> bool: ...  # its final response went out already

    @property
    def has_sender(self) -> bool: ...  # the model took its response sender

    def fail(self, error: ServerError) -> None: ...

    def respond(self, response: InferenceResponse) -> None: ...  # the final response

    def reschedule(self) -> None: ...


def last_traceback_line(exc: BaseException) -> str:
    """`Name: message`, the class unqualified as Triton's stub prints it."""
    line = traceback.format_exception_only(type(exc), exc)[-1].strip()
    qualified = f"{type(exc).__module__}.{type(exc).__qualname__}"
    if line.startswith(qualified):
        line = type(exc).__name__ + line[len(qualified):]
    return line


def model_file_line(exc: BaseException, model_file: Any) -> int:
    """The last line of model_file in the exception's traceback (0 if none)."""
    line = 0
    resolved = Path(model_file).resolve()
    for frame in traceback.extract_tb(exc.__traceback__):
        if Path(frame.filename).resolve() == resolved:
            line = frame.lineno or 0
    return line


@dataclass(slots=True)
class ExecuteRules:
    model_name: str
    instance_name: str
    decoupled: bool
    iterative: bool  # sequence_batching { iterative_sequence: true }: may reschedule

    def failure(self, message: str, code_from: BaseException | None = None) -> ServerError:
        text = (f"Failed to process the request(s) for model instance '{self.instance_name}', "
                f"message: {message}")
        if isinstance(code_from, TritonError):
            return ServerError(text, to_server_error(code_from).code)
        return InternalError(text)

    def finish(self, slots: list[Slot], pb_requests: list[Any], result: Any,
               exc: BaseException | None) -> None:
        """Apply the response rules to what execute returned (or raised)."""
        rescheduled: list[Slot] = []
        for slot, pb in zip(slots, pb_requests, strict=False):
            if pb.release_flags() & TRITONSERVER_REQUEST_RELEASE_RESCHEDULE:
                if self.iterative and not slot.closed:
                    rescheduled.append(slot)
                elif not slot.closed:
                    slot.fail(InternalError(
                        f"request of model '{self.model_name}' was released with "
                        "TRITONSERVER_REQUEST_RELEASE_RESCHEDULE, but the model is not configured "
                        "with sequence_batching { iterative_sequence: true }"))
        resched_ids = {id(s) for s in rescheduled}

        def fail_open(error: ServerError, include_rescheduled: bool = False) -> None:
            for slot in slots:
                if (include_rescheduled or id(slot) not in resched_ids) and not slot.closed:
                    slot.fail(error)

        if exc is not None:
            log.error("execute of model '%s' raised:\n%s", self.model_name,
                      "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
            fail_open(self.failure(last_traceback_line(exc), exc), include_rescheduled=True)
            return
        if self.decoupled:
            if result is not None:
                fail_open(self.failure(
                    "Python model is using the decoupled mode and the execute function must return None"))
        else:
            self._finish_default(slots, result, resched_ids, fail_open)
        for slot in rescheduled:
            if not slot.closed:
                slot.reschedule()

    def _finish_default(self, slots: list[Slot], result: Any, resched_ids: set[int],
                        fail_open: Any) -> None:
        if result is None:
            # Triton (24.06+): the model answers through each request's response sender,
            # in execute or later from another thread (tensorrtllm_backend's Python
            # tensorrt_llm model does). A request whose sender the model never took can
            # never be answered: it fails now rather than hang.
            unanswerable = [s for s in slots if id(s) not in resched_ids and not s.closed
                            and not s.has_sender]
            if unanswerable:
                error = self.failure("Expected a list in the execute return, got None (or "
                                     "respond through the response sender)")
                for slot in unanswerable:
                    slot.fail(error)
            return
        if not isinstance(result, (list, tuple)) or len(result) != len(slots):
            size = len(result) if isinstance(result, (list, tuple)) else 1
            fail_open(self.failure(
                "Number of InferenceResponse objects do not match the number of "
                f"InferenceRequest objects. InferenceRequest(s) size is:{len(slots)}, and "
                f"InferenceResponse(s) size is:{size}"), include_rescheduled=True)
            return
        for i, (slot, resp) in enumerate(zip(slots, result, strict=False)):
            if id(slot) in resched_ids or slot.closed:
                continue
            if resp is None or not isinstance(resp, InferenceResponse):
                what = "None" if resp is None else type(resp).__name__
                fail_open(self.failure(
                    f"Expected an InferenceResponse at index {i} of the execute return, got {what}"))
                return
        for slot, resp in zip(slots, result, strict=False):
            if id(slot) not in resched_ids and not slot.closed:
                slot.respond(resp)
