"""The Python backend: one TritonPythonModel object per instance, initialize/execute/
finalize/is_ready, default and decoupled modes, async execute on a per-instance event
loop, the response-list rule, rescheduling and error mapping.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import threading
import traceback
from typing import Any

from llmserve.backends.base import BackendInstance, BackendModel, InstanceSpec, ModelSpec
from llmserve.backends.python import context
from llmserve.backends.python.loader import import_model_module
from llmserve.backends.python.request import InferenceRequest
from llmserve.backends.python.response import InferenceResponse, deliver
from llmserve.backends.python.response_rules import ExecuteRules, last_traceback_line
from llmserve.core.errors import ServerError, Unavailable
from llmserve.repository import model_file_path
from llmserve.scheduling.request import SchedRequest

log = logging.getLogger(__name__)


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
        iterative = (spec.config.HasField("sequence_batching")
                     and spec.config.sequence_batching.iterative_sequence)
        self.rules = ExecuteRules(spec.name, instance.name, self.decoupled, iterative)
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
        if not self.is_async:
            token = context.enter(self._exec_ctx)
            try:
                result = self.obj.execute(pb_requests)
            except Exception as exc:
                self._finish(batch, pb_requests, None, exc)
            else:
                self._finish(batch, pb_requests, result, None)
            finally:
                context.leave(token)
            return None

        ctx = self._exec_ctx

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

    def _finish(self, batch: list[SchedRequest], pb_requests: list[InferenceRequest],
                result: Any, exc: BaseException | None) -> None:
        self.rules.finish([_SchedSlot(s) for s in batch], pb_requests, result, exc)

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


class _SchedSlot:
    """A request of the batch, for the response rules."""

    __slots__ = ("sreq",)

    def __init__(self, sreq: SchedRequest):
        self.sreq = sreq

    @property
    def closed(self) -> bool:
        return self.sreq.sink.closed

    def fail(self, error: ServerError) -> None:
        self.sreq.fail(error)

    def respond(self, response: InferenceResponse) -> None:
        deliver(self.sreq, response, True)

    def reschedule(self) -> None:
        if self.sreq.requeue is not None:
            self.sreq.requeue(self.sreq)
