"""The Python backend's stub mode (Triton's): every instance runs its TritonPythonModel in
a stub process of its own. The server sends each batch as one message (inputs through
shared memory) and gets the responses back, relays the stub's BLS requests, model
control and metrics, and survives the stub: a stub that dies fails the requests it held
with Triton's "Stub process ... is not healthy." and the model goes UNAVAILABLE with the
reason; an execute that makes no progress for stub-timeout-seconds gets its stub killed
and the model reloaded.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import threading
import time
from typing import Any

from llmserve.backends.base import BackendInstance, BackendModel, InstanceSpec, ModelSpec
from llmserve.backends.python.backend import execute_rules, initialize_args
from llmserve.backends.python.stub_env import interpreter_for
from llmserve.backends.python.stub_messages import unpack_error, unpack_tensors
from llmserve.backends.python.stub_process import StubProcess
from llmserve.backends.python.stub_services import StubServices
from llmserve.backends.python.stub_settings import settings_of
from llmserve.core.errors import InternalError, ServerError, Unavailable
from llmserve.repository import model_file_path
from llmserve.scheduling.host_policy import pin_process
from llmserve.scheduling.request import SchedRequest

log = logging.getLogger("llmserve.backends.python.stub")
_keys = itertools.count(1)


class StubModel(BackendModel):
    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.settings = settings_of(spec.options)
        self.model_file = model_file_path(spec.model_dir, spec.version, spec.config)
        if not self.model_file.is_file():
            raise Unavailable(f"Python model file not found in '{self.model_file}'")
        self.interpreter = interpreter_for(spec.config, spec.model_dir)
        self.pool = concurrent.futures.ThreadPoolExecutor(
            self.settings.thread_pool_size, thread_name_prefix=f"stub-calls-{spec.name}")

    def create_instance(self, instance: InstanceSpec) -> BackendInstance:
        return StubInstance(self, instance)

    def unload(self) -> None:
        self.pool.shutdown(wait=False)


class StubInstance(BackendInstance):
    def __init__(self, model: StubModel, instance: InstanceSpec):
        spec = self.spec = model.spec
        self.name = instance.name
        self.settings = model.settings
        self.decoupled = spec.decoupled
        self._lock = threading.Lock()
        self._live: dict[int, SchedRequest] = {}  # requests the stub holds, by key
        self._batches: dict[int, tuple[list[SchedRequest], concurrent.futures.Future]] = {}
        self._batch_ids = itertools.count(1)
        self._progress = time.monotonic()  # the stub's last message
        self._dead: str | None = None
        self._closing = False
        self._reload_after_exit = False
        self._init: concurrent.futures.Future = concurrent.futures.Future()
        self.process = StubProcess(instance.name, model.interpreter, self.settings)
        self.link = self.process.link
        self.services = StubServices(spec.server, spec.name, self.link, model.pool)
        rules = execute_rules(spec, instance)
        self.process.start({
            "mode": "model", "model_file": str(model.model_file), "model_name": spec.name,
            "args": initialize_args(spec, instance), "decoupled": self.decoupled,
            "rules": [rules.model_name, rules.instance_name, rules.decoupled, rules.iterative],
            "log_level": logging.getLogger().getEffectiveLevel(),
            **shm_init(self.process.link.arena.prefix, self.settings),
        }, self)
        try:
            error, self.is_async, self.has_is_ready = self._init.result()
        except Exception as exc:
            raise Unavailable(str(exc)) from None
        if error is not None:
            self._closing = True
            self.process.stop(self.settings.stub_timeout_seconds)
            raise Unavailable(error)
        log.info("model instance '%s' runs in stub process %d (%s)", self.name,
                 self.process.pid, self.process.hello[3])

    def pin_cpus(self, cpus: set[int]) -> None:
        pin_process(self.process.pid, cpus, self.spec.name)

    # -- execute --------------------------------------------------------------------------
    def execute(self, batch: list[SchedRequest]) -> concurrent.futures.Future | None:
        done: concurrent.futures.Future = concurrent.futures.Future()
        batch_id = next(self._batch_ids)
        with self._lock:
            dead = self._dead
            if dead is None:
                keys = [self._register(sreq) for sreq in batch]
                self._batches[batch_id] = (batch, done)
                if len(self._batches) == 1:
                    self._progress = time.monotonic()
        if dead is not None:
            self._fail(batch, dead)
            return None
        wires = [self._wire(key, sreq) for key, sreq in zip(keys, batch, strict=True)]
        self.link.send(("exec", batch_id, wires))
        for key, sreq in zip(keys, batch, strict=True):
            if "stub_cancel" not in sreq.backend_state:  # once, across reschedules
                sreq.backend_state["stub_cancel"] = True
                sreq.request.cancel.add_callback(lambda k=key: self._cancel(k))
        if self.is_async:
            return done
        done.result()
        return None

    def _register(self, sreq: SchedRequest) -> int:
        key = sreq.backend_state.get("stub_key")
        if key is None:
            key = sreq.backend_state["stub_key"] = next(_keys)
        self._live[key] = sreq
        return key

    def _wire(self, key: int, sreq: SchedRequest) -> tuple:
        r = sreq.request
        inputs = [self.link.pack(t.name, t.datatype, t.data) for t in sreq.inputs.values()]
        return (key, r.model_name, inputs, list(sreq.output_names), r.id, r.correlation_id,
                r.model_version, r.flags, r.timeout_us, dict(r.parameters), sreq.is_cancelled())

    def _cancel(self, key: int) -> None:
        if self._dead is None and key in self._live:
            self.link.send(("cancel", key))

    # -- the stub's messages (its reader thread) -----------------------------------------------
    def on_message(self, message: tuple) -> None:
        self._progress = time.monotonic()
        kind = message[0]
        if kind == "resp":
            _, key, packed, final = message
            sreq = self._live.pop(key, None) if final else self._live.get(key)
            if sreq is not None:
                self._deliver(sreq, packed, final)
        elif kind == "done":
            self._done(message[1], message[2])
        elif self.link.handle_common(message):
            pass
        elif kind == "init_done":
            self._init.set_result(message[1:])
        else:
            self.services.handle(message)

    def _deliver(self, sreq: SchedRequest, packed: tuple | None, final: bool) -> None:
        if packed is None:
            sreq.respond(final=final)
            return
        outputs, error, params = packed
        if error is not None:
            sreq.respond(error=unpack_error(error), final=final, parameters=params)
        else:
            sreq.respond(unpack_tensors(self.link, outputs), final=final, parameters=params)

    def _done(self, batch_id: int, outcomes: list) -> None:
        with self._lock:
            batch, done = self._batches.pop(batch_id, (None, None))
        if batch is None:
            return
        for sreq, outcome in zip(batch, outcomes, strict=True):  # rescheduled ones first
            if outcome == ("s",):
                self._live.pop(sreq.backend_state["stub_key"], None)
                if sreq.requeue is not None and not sreq.sink.closed:
                    sreq.requeue(sreq)
        done.set_result(None)  # the instance takes its next batch while we answer this one
        for sreq, outcome in zip(batch, outcomes, strict=True):
            if outcome is not None and outcome[0] == "r":
                self._deliver(sreq, outcome[1], True)
            elif outcome is not None and outcome[0] == "e":
                sreq.fail(unpack_error(outcome[1]))
            if outcome is not None or sreq.sink.closed:
                self._live.pop(sreq.backend_state["stub_key"], None)

    # -- health ---------------------------------------------------------------------------------
    def hang_deadline(self) -> float | None:
        """An execute is hung once the stub has sent nothing for stub-timeout-seconds while
        it runs, unless the stub waits on a BLS call of its own (the server's work)."""
        if not self._batches or self.services.bls_pending():
            return None
        return self._progress + self.settings.stub_timeout_seconds

    def on_hang(self) -> None:
        seconds = self.settings.stub_timeout_seconds
        log.error("model instance '%s': execute made no progress for %.0f s "
                  "(stub-timeout-seconds); killing its stub process %d and reloading model '%s'",
                  self.name, seconds, self.process.pid, self.spec.name)
        self._reload_after_exit = True
        self.process.kill(f"killed after its execute made no progress for {seconds:.0f} s "
                          "(stub-timeout-seconds)")

    def on_exit(self, reason: str) -> None:
        with self._lock:
            expected = self._closing
            self._dead = (f"Stub process '{self.name}' is not healthy. (pid {self.process.pid}: "
                          f"{reason})")
            live, self._live = self._live, {}
            batches, self._batches = self._batches, {}
        self.services.cancel_all()
        if not self._init.done():
            self._init.set_exception(Unavailable(
                f"stub process of model instance '{self.name}' exited during initialize "
                f"({reason})"))
            return
        if expected and not live:
            return
        log.error("stub process %d of model instance '%s' ended (%s): %d request(s) fail, "
                  "model '%s' becomes UNAVAILABLE", self.process.pid, self.name, reason,
                  len(live), self.spec.name)
        if self.spec.on_fatal is not None:  # first: a failed client sees the model down
            self.spec.on_fatal(self._dead)
        self._fail(list(live.values()), self._dead)
        for _batch, done in batches.values():
            done.set_result(None)
        if self._reload_after_exit:
            self._reload()

    def _fail(self, requests: list[SchedRequest], reason: str) -> None:
        error = InternalError(f"Failed to process the request(s) for model instance "
                              f"'{self.name}', message: {reason}")
        for sreq in requests:
            if not sreq.sink.closed:
                sreq.fail(error)

    def _reload(self) -> None:
        server = self.spec.server
        loop = getattr(server, "loop", None)
        if loop is None or loop.is_closed():
            return

        async def reload() -> None:
            try:
                await server.models.load(self.spec.name)
            except ServerError as exc:
                log.error("reloading model '%s' after its stub was killed failed: %s",
                          self.spec.name, exc)

        asyncio.run_coroutine_threadsafe(reload(), loop)

    def is_ready(self) -> bool:
        if self._dead is not None:
            return False
        if not self.has_is_ready:
            return True  # no round trip, as Triton's backend skips it
        try:
            return bool(self.link.call("is_ready", timeout=self.settings.stub_timeout_seconds))
        except Exception as exc:
            log.warning("is_ready of model instance '%s' gave no answer: %s", self.name, exc)
            return False

    def finalize(self) -> None:
        with self._lock:
            self._closing = True
            dead = self._dead is not None
        if not dead:
            try:
                self.link.call("finalize", timeout=self.settings.stub_timeout_seconds)
            except Exception as exc:
                log.warning("finalize of model instance '%s' gave no answer (%s); its stub "
                            "is stopped", self.name, exc)
        self.process.stop(self.settings.stub_timeout_seconds)


def shm_init(prefix: str, settings: Any) -> dict[str, Any]:
    """The stub's side of the shared-memory settings (its own arena's names and sizes)."""
    return {"shm_prefix": prefix + "stub_", "shm_default": settings.shm_default_byte_size,
            "shm_growth": settings.shm_growth_byte_size}
