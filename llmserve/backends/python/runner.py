"""One TritonPythonModel object: initialize / execute / is_ready / finalize with the
model's pb_utils context, async functions on a per-instance event loop, and the response
rules applied to what execute gives back. Runs in the server (in-process mode) and in a
stub process alike; the caller supplies the requests and their Slots.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import threading
import traceback
from typing import Any

from llmserve.backends.python import context
from llmserve.backends.python.response_rules import ExecuteRules, Slot, last_traceback_line

log = logging.getLogger("llmserve.backends.python.backend")


class ModelInitError(Exception):
    """initialize (or building the model object) failed; str() is the reason to show."""


class ModelRunner:
    def __init__(self, module: Any, server: Any, rules: ExecuteRules, args: dict[str, str]):
        self.rules = rules
        name = rules.model_name
        self._ctx = context.ModelContext(server, name)
        self._exec_ctx = context.ModelContext(server, name, in_execute=True)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        token = context.enter(self._ctx)
        try:
            self.obj = module.TritonPythonModel()
        except Exception as exc:
            log.error("TritonPythonModel() of model '%s' failed:\n%s", name, traceback.format_exc())
            raise ModelInitError(last_traceback_line(exc)) from exc
        finally:
            context.leave(token)
        execute = getattr(self.obj, "execute", None)
        if not callable(execute):
            raise ModelInitError(f"TritonPythonModel of model '{name}' has no execute function")
        self.is_async = inspect.iscoroutinefunction(execute)
        if self.is_async or inspect.iscoroutinefunction(getattr(self.obj, "initialize", None)):
            self._start_loop()
        try:
            init = getattr(self.obj, "initialize", None)
            if init is not None:
                self._call(init, args)
        except Exception as exc:
            self._stop_loop()
            log.error("initialize of model '%s' failed:\n%s", name, traceback.format_exc())
            raise ModelInitError(last_traceback_line(exc)) from exc

    # -- event loop for async models --------------------------------------------------
    def _start_loop(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(
            target=self.loop.run_forever, name=f"pyloop-{self.rules.instance_name}", daemon=True
        )
        self._loop_thread.start()

    def _stop_loop(self) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            if self._loop_thread is not None:
                self._loop_thread.join(timeout=5)
            self.loop = None

    def _call(self, fn: Any, *args: Any) -> Any:
        """Run a model function (sync or async) with its pb_utils context; blocking."""
        if inspect.iscoroutinefunction(fn):
            async def run() -> Any:
                context.enter(self._ctx)
                return await fn(*args)

            assert self.loop is not None
            return asyncio.run_coroutine_threadsafe(run(), self.loop).result()
        token = context.enter(self._ctx)
        try:
            return fn(*args)
        finally:
            context.leave(token)

    # -- execute ------------------------------------------------------------------------
    def execute(self, pb_requests: list[Any], slots: list[Slot],
                parents: tuple[Any, ...]) -> concurrent.futures.Future | None:
        """Run execute and apply the response rules: at once (None) for a sync model, when
        the returned Future completes for an async one. parents: the requests'
        cancellation tokens (a decoupled BLS call made for them ends when all are)."""
        ctx = context.ModelContext(self._exec_ctx.server, self.rules.model_name, True, parents)
        if not self.is_async:
            token = context.enter(ctx)
            try:
                result = self.obj.execute(pb_requests)
            except Exception as exc:
                self.rules.finish(slots, pb_requests, None, exc)
            else:
                self.rules.finish(slots, pb_requests, result, None)
            finally:
                context.leave(token)
            return None

        async def run() -> None:
            context.enter(ctx)
            try:
                result = await self.obj.execute(pb_requests)
            except Exception as exc:
                self.rules.finish(slots, pb_requests, None, exc)
            else:
                self.rules.finish(slots, pb_requests, result, None)

        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(run(), self.loop)

    # -- lifecycle ----------------------------------------------------------------------
    @property
    def has_is_ready(self) -> bool:
        return getattr(self.obj, "is_ready", None) is not None

    def is_ready(self) -> bool:
        fn = getattr(self.obj, "is_ready", None)
        if fn is None:
            return True
        try:
            return bool(self._call(fn))
        except Exception:
            log.warning("is_ready of model '%s' raised:\n%s", self.rules.model_name,
                        traceback.format_exc())
            return False

    def finalize(self) -> None:
        fn = getattr(self.obj, "finalize", None)
        try:
            if fn is not None:
                self._call(fn)
        except Exception:
            log.error("finalize of model '%s' raised:\n%s", self.rules.model_name,
                      traceback.format_exc())
        finally:
            self._stop_loop()
