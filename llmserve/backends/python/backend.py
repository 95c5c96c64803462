"""The Python backend: one TritonPythonModel object per instance, initialize/execute/
finalize/is_ready, default and decoupled modes, async execute on a per-instance event
loop, the response-list rule, rescheduling and error mapping.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import inspect
import logging
import threading
import traceback
from typing import Any

from llmserve.backends.base import BackendInstance, BackendModel, InstanceSpec, ModelSpec
from llmserve.backends.python import context
from llmserve.backends.python.errors import TritonError, to_server_error
from llmserve.backends.python.loader import import_model_module
from llmserve.backends.python.request import (
    TRITONSERVER_REQUEST_RELEASE_RESCHEDULE,
    InferenceRequest,
)
from llmserve.backends.python.response import InferenceResponse, deliver
from llmserve.core.errors import InternalError, ServerError, Unavailable
from llmserve.repository import model_file_path
from llmserve.scheduling.request import SchedRequest

log = logging.getLogger(__name__)


def last_traceback_line(exc: BaseException) -> str:
    """`Name: message`, the class unqualified as Triton's stub prints it."""
    line = traceback.format_exception_only(type(exc), exc)[-1].strip()
    qualified = f"{type(exc).__module__}.{type(exc).__qualname__}"
    if line.startswith(qualified):
        line = type(exc).__name__ + line[len(qualified):]
    return line


class PythonModel(BackendModel):
    def __init__(self, spec: ModelSpec):
        self.spec = spec
        path = model_file_path(spec.model_dir, spec.version, spec.config)
        ctx = context.ModelContext(spec.server, spec.name)
        token = context.enter(ctx)
        try:
            self.module = import_model_module(path, spec.name, spec.version)
        except Exception as exc:
            raise Unavailable(last_traceback_line(exc)) from exc
        finally:
            context.leave(token)
        if not hasattr(self.module, "TritonPythonModel"):
            raise Unavailable(f"{path.name} of model '{spec.name}' defines no class TritonPythonModel")

    def create_instance(self, instance: InstanceSpec) -> BackendInstance:
        return PythonInstance(self, instance)


def load_model(spec: ModelSpec) -> PythonModel:
    return PythonModel(spec)


class PythonInstance(BackendInstance):
    def __init__(self, model: PythonModel, instance: InstanceSpec):
        spec = model.spec
        self.spec = spec
        self.instance = instance
        self.decoupled = spec.decoupled
        self.iterative = spec.config.HasField("sequence_batching") and spec.config.sequence_batching.iterative_sequence
        self._ctx = context.ModelContext(spec.server, spec.name)
        self._exec_ctx = context.ModelContext(spec.server, spec.name, in_execute=True)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self.obj = model.module.TritonPythonModel()
        self.is_async = inspect.iscoroutinefunction(getattr(self.obj, "execute", None))
        if not callable(getattr(self.obj, "execute", None)):
            raise Unavailable(f"TritonPythonModel of model '{spec.name}' has no execute function")
        if self.is_async or inspect.iscoroutinefunction(getattr(self.obj, "initialize", None)):
            self._start_loop()
        args = {
            "model_config": spec.config_json,
            "model_instance_kind": instance.kind.removeprefix("KIND_"),
            "model_instance_name": instance.name,
            "model_instance_device_id": str(instance.device_id),
            "model_repository": str(spec.model_dir),
            "model_version": str(spec.version),
            "model_name": spec.name,
        }
        try:
            init = getattr(self.obj, "initialize", None)
            if init is not None:
                self._call(init, args)
        except Exception as exc:
            self._stop_loop()
            log.error("initialize of model '%s' failed:\n%s", spec.name, traceback.format_exc())
            raise Unavailable(last_traceback_line(exc)) from exc

    # -- event loop for async models --------------------------------------------------
    def _start_loop(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(
            target=self.loop.run_forever, name=f"pyloop-{self.instance.name}", daemon=True
        )
        self._loop_thread.start()

    def _stop_loop(self) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            if self._loop_thread is not None:
                self._loop_thread.join(timeout=5)
            self.loop = None

    def _call(self, fn: Any, *args: Any, in_execute: bool = False) -> Any:
        """Run a model function (sync or async) with its pb_utils context; blocking."""
        ctx = self._exec_ctx if in_execute else self._ctx
        if inspect.iscoroutinefunction(fn):
            async def run() -> Any:
                context.enter(ctx)
                return await fn(*args)

            assert self.loop is not None
            return asyncio.run_coroutine_threadsafe(run(), self.loop).result()
        token = context.enter(ctx)
        try:
            return fn(*args)
        finally:
            context.leave(token)

    # -- execute ------------------------------------------------------------------------
    def execute(self, batch: list[SchedRequest]) -> concurrent.futures.Future | None:
        for sreq in batch:
            sreq.backend_state.setdefault("decoupled", self.decoupled)
        pb_requests = [InferenceRequest._from_sched(s) for s in batch]
        ctx = dataclasses.replace(self._exec_ctx, parents=tuple(s.request.cancel for s in batch))
        if not self.is_async:
            token = context.enter(ctx)
            try:
                result = self.obj.execute(pb_requests)
            except Exception as exc:
                self._finish(batch, pb_requests, None, exc)
            else:
                self._finish(batch, pb_requests, result, None)
            finally:
                context.leave(token)
            return None

        async def run() -> None:
            context.enter(ctx)
            try:
                result = await self.obj.execute(pb_requests)
            except Exception as exc:
                self._finish(batch, pb_requests, None, exc)
            else:
                self._finish(batch, pb_requests, result, None)

        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(run(), self.loop)

    def _failure(self, message: str, code_from: BaseException | None = None) -> ServerError:
        text = f"Failed to process the request(s) for model instance '{self.instance.name}', message: {message}"
        if isinstance(code_from, TritonError):
            err = to_server_error(code_from)
            return ServerError(text, err.code)
        return InternalError(text)

    def _finish(self, batch: list[SchedRequest], pb_requests: list[InferenceRequest],
                result: Any, exc: BaseException | None) -> None:
        """Apply the response rules to what execute returned (or raised)."""
        rescheduled: list[SchedRequest] = []
        for sreq, pb in zip(batch, pb_requests, strict=False):
            if pb.release_flags() & TRITONSERVER_REQUEST_RELEASE_RESCHEDULE:
                if self.iterative and not sreq.sink.closed:
                    rescheduled.append(sreq)
                elif not sreq.sink.closed:
                    sreq.fail(InternalError(
                        f"request of model '{self.spec.name}' was released with "
                        "TRITONSERVER_REQUEST_RELEASE_RESCHEDULE, but the model is not configured "
                        "with sequence_batching { iterative_sequence: true }"))
        resched_ids = {id(s) for s in rescheduled}

        def fail_open(error: ServerError, include_rescheduled: bool = False) -> None:
            for sreq in batch:
                if include_rescheduled or id(sreq) not in resched_ids:
                    if not sreq.sink.closed:
                        sreq.fail(error)

        if exc is not None:
            log.error("execute of model '%s' raised:\n%s", self.spec.name,
                      "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
            fail_open(self._failure(last_traceback_line(exc), exc), include_rescheduled=True)
            return
        if self.decoupled:
            if result is not None:
                fail_open(self._failure(
                    "Python model is using the decoupled mode and the execute function must return None"))
        else:
            self._finish_default(batch, result, resched_ids, fail_open)
        for sreq in rescheduled:
            if sreq.requeue is not None and not sreq.sink.closed:
                sreq.requeue(sreq)

    def _finish_default(self, batch: list[SchedRequest], result: Any, resched_ids: set[int],
                        fail_open: Any) -> None:
        if result is None:
            # Triton (24.06+): the model answers through each request's response sender,
            # in execute or later from another thread (tensorrtllm_backend's Python
            # tensorrt_llm model does). A request whose sender the model never took can
            # never be answered: it fails now rather than hang.
            unanswerable = [s for s in batch if id(s) not in resched_ids and not s.sink.closed
                            and s.backend_state.get("sender") is None]
            if unanswerable:
                error = self._failure("Expected a list in the execute return, got None (or "
                                      "respond through the response sender)")
                for sreq in unanswerable:
                    sreq.fail(error)
            return
        if not isinstance(result, (list, tuple)) or len(result) != len(batch):
            size = len(result) if isinstance(result, (list, tuple)) else 1
            fail_open(self._failure(
                "Number of InferenceResponse objects do not match the number of "
                f"InferenceRequest objects. InferenceRequest(s) size is:{len(batch)}, and "
                f"InferenceResponse(s) size is:{size}"), include_rescheduled=True)
            return
        for i, (sreq, resp) in enumerate(zip(batch, result, strict=False)):
            if id(sreq) in resched_ids or sreq.sink.closed:
                continue
            if resp is None or not isinstance(resp, InferenceResponse):
                what = "None" if resp is None else type(resp).__name__
                fail_open(self._failure(
                    f"Expected an InferenceResponse at index {i} of the execute return, got {what}"))
                return
        for sreq, resp in zip(batch, result, strict=False):
            if id(sreq) not in resched_ids and not sreq.sink.closed:
                deliver(sreq, resp, True)

    # -- lifecycle ----------------------------------------------------------------------
    def is_ready(self) -> bool:
        fn = getattr(self.obj, "is_ready", None)
        if fn is None:
            return True
        try:
            return bool(self._call(fn))
        except Exception:
            log.warning("is_ready of model '%s' raised:\n%s", self.spec.name, traceback.format_exc())
            return False

    def finalize(self) -> None:
        fn = getattr(self.obj, "finalize", None)
        try:
            if fn is not None:
                self._call(fn)
        except Exception:
            log.error("finalize of model '%s' raised:\n%s", self.spec.name, traceback.format_exc())
        finally:
            self._stop_loop()
