"""The stub's work: load the model, then serve the server's messages until finalize.
See stub_main.py for the process around it.

Messages from the server: ("exec", batch, [request]), ("cancel", key), ("bls_resp", call,
item, end), ("is_ready", call), ("finalize", call), plus Link's seg/free/reply.
To the server: ("init_done", error, is_async, has_is_ready), ("resp", key, response, final),
("done", batch, [outcome]), ("bls", call, request, decoupled), ("bls_cancel", call),
("call", call, what, *args), ("metric_op", ...), ("log", name, level, text).
"""

from __future__ import annotations

import collections
import importlib
import logging
import os
import re
import sys
import threading
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from llmserve.backends.python import context
from llmserve.backends.python.response_rules import (
    ExecuteRules,
    last_traceback_line,
    model_file_line,
)
from llmserve.backends.python.runner import ModelInitError, ModelRunner
from llmserve.backends.python.stub_channel import Channel, ChannelClosed
from llmserve.backends.python.stub_link import Link
from llmserve.backends.python.stub_messages import pack_error
from llmserve.backends.python.stub_runtime import (
    ForwardingLogHandler,
    RequestState,
    StubRequest,
    StubServer,
    StubSlot,
)
from llmserve.core.errors import InternalError
from llmserve.core.gc_freeze import freeze_loaded_heap

log = logging.getLogger("llmserve.backends.python.stub")
_HOUSEKEEPING_S = 0.1
# after this many quiet ticks (no work, nothing to flush) housekeeping waits up to
# _IDLE_HOUSEKEEPING_S, or until work starts: dozens of idle stubs waking ten times a
# second cost about 5% of a core
_IDLE_TICKS = 20
_IDLE_HOUSEKEEPING_S = 1.0


def import_model(model_file: Path) -> ModuleType:
    """model.py as Triton's stub imports it: `<version>.<file stem>`, with the version
    folder and the model folder on sys.path for the stub's whole life."""
    version_dir = model_file.parent
    sys.path.append(str(version_dir))
    sys.path.append(str(version_dir.parent))
    _provide_stand_ins(model_file)
    return importlib.import_module(f"{version_dir.name}.{model_file.stem}")


def _provide_stand_ins(model_file: Path) -> None:
    """A model whose files import tensorrt_llm, where the real package is not installed,
    gets llmserve's stand-in package under that name (llmserve.compat, where present)."""
    try:
        from llmserve.compat.modules import provided_modules
    except ImportError:
        return
    pattern = re.compile(r"^\s*(from|import)\s+tensorrt_llm\b", re.M)
    for path in model_file.parent.rglob("*.py"):
        try:
            if pattern.search(path.read_text(encoding="utf-8", errors="replace")):
                break
        except OSError:
            continue
    else:
        return
    provided = provided_modules("tensorrt_llm")
    if provided:
        sys.modules.update(provided)


class Stub:
    def __init__(self, channel: Channel, init: dict[str, Any], name: str):
        self.init = init
        self.name = name
        self.link = Link(channel, init["shm_prefix"], init["shm_default"], init["shm_growth"])
        self.server = StubServer(self.link)
        self.runner: ModelRunner | None = None
        # two threads serve (see _serve): which one reads, whether it runs model work,
        # since when, and the model work not yet started
        self._role = threading.Condition()
        self._reader: int | None = None
        self._reader_working = False
        self._work_since = 0.0
        self._work_started = threading.Event()  # wakes an idle housekeeping thread
        self._working = False
        self._pending: collections.deque[tuple] = collections.deque()
        self.link.before_wait = self.server.before_wait = self.hand_off_reading

    def run(self) -> None:
        root = logging.getLogger()
        root.handlers[:] = [ForwardingLogHandler(self.link)]
        root.setLevel(self.init["log_level"])
        sys.modules["triton_python_backend_utils"] = importlib.import_module(
            "llmserve.backends.python.stub_pb_utils")
        context.set_default_server(self.server)
        # reads the server's messages from now on: initialize may already need replies
        threading.Thread(target=self._serve, name="llmserve-stub-serve", daemon=True).start()
        threading.Thread(target=self._housekeeping, name="llmserve-stub-housekeeping",
                         daemon=True).start()
        if self.init["mode"] == "auto_complete":
            self._auto_complete()
            self._exit()
        error = self._load()
        if error is None:  # what initialize built lives as long as the stub
            freeze_loaded_heap(f"model '{self.init['model_name']}' stub")
        runner = self.runner
        self.link.send(("init_done", error, bool(runner and runner.is_async),
                        bool(runner and runner.has_is_ready)))
        if error is not None:
            self._exit()
        self._serve()

    def _exit(self) -> None:
        self.link.flush_notes()
        sys.stdout.flush()
        sys.stderr.flush()
        # the model's own non-daemon threads must not keep a finished stub alive
        os._exit(0)

    # -- loading ----------------------------------------------------------------------------
    def _import(self) -> ModuleType:
        token = context.enter(context.ModelContext(self.server, self.init["model_name"]))
        try:
            return import_model(Path(self.init["model_file"]))
        finally:
            context.leave(token)

    def _load(self) -> str | None:
        try:
            module = self._import()
        except Exception as exc:
            log.error("loading %s failed:\n%s", self.init["model_file"], traceback.format_exc())
            return last_traceback_line(exc)
        if not hasattr(module, "TritonPythonModel"):
            return (f"{Path(self.init['model_file']).name} of model '{self.init['model_name']}' "
                    "defines no class TritonPythonModel")
        try:
            self.runner = ModelRunner(module, self.server, ExecuteRules(*self.init["rules"]),
                                      self.init["args"])
        except ModelInitError as exc:
            return str(exc)
        return None

    def _auto_complete(self) -> None:
        """Run the model's auto_complete_config on the config the server sent; reply with
        the completed config, or (type, message, line in model.py) when it failed."""
        from llmserve.backends.python.model_config import ModelConfig

        model_file = Path(self.init["model_file"])
        try:
            cls = getattr(self._import(), "TritonPythonModel", None)
            if cls is None:
                raise AttributeError(f"{model_file.name} defines no class TritonPythonModel")
            cfg = ModelConfig(self.init["config"])
            result = cls.auto_complete_config(cfg)
        except Exception as exc:
            failure = (type(exc).__name__, str(exc), model_file_line(exc, model_file))
            self.link.send(("auto_complete_done", None, failure))
            return
        if result is not None and not isinstance(result, ModelConfig):
            failure = ("not_a_config", type(result).__name__, 0)
            self.link.send(("auto_complete_done", None, failure))
            return
        self.link.send(("auto_complete_done", (result or cfg).as_dict(), None))

    # -- serving ----------------------------------------------------------------------------
    def _serve(self) -> None:
        """Both stub threads run this. One of them reads the server's messages; the one
        that reads an execute runs it itself, so no hand-over lies on a request's path,
        and keeps the reader's role while it works. The other thread takes over reading
        when the work waits on the server (a BLS call, a reply: hand_off_reading) or has
        run for a while (housekeeping), so cancellation and is_ready still arrive."""
        role = self._role
        me = threading.get_ident()
        while True:
            with role:
                while self._reader is not None:
                    role.wait()
                self._reader = me
            work = self._read_until_work()
            while work is not None:
                self._work(work)
                read_on = False
                with role:
                    work = self._pending.popleft() if self._pending else None
                    if work is None:
                        self._working = False
                        if self._reader == me:  # nobody took over: read on
                            self._reader_working = False
                            read_on = True
                if read_on:
                    work = self._read_until_work()

    def _read_until_work(self) -> tuple | None:
        """Read and handle messages until one is model work this thread is to run (None:
        the work went to the thread already running some)."""
        while True:
            try:
                work = self._dispatch(self.link.channel.recv())
            except ChannelClosed:
                os._exit(0)  # the server is gone
            if work is None:
                continue
            with self._role:
                if self._working:
                    self._pending.append(work)  # the working thread takes it next
                    continue
                self._working = self._reader_working = True
                self._work_since = time.monotonic()
                self._work_started.set()
                return work

    def hand_off_reading(self) -> None:
        """The model's work is about to wait on the server: if this thread holds the
        reader's role while working, the other thread reads from now on."""
        with self._role:
            if self._reader == threading.get_ident() and self._reader_working:
                self._reader, self._reader_working = None, False
                self._role.notify()

    def _dispatch(self, message: tuple) -> tuple | None:
        """Handle a message now, or return it as model work (a sync execute, finalize)."""
        kind = message[0]
        server = self.server
        if kind == "exec":
            _, batch, wires = message
            states = [self._state(w) for w in wires]
            if self.runner is not None and self.runner.is_async:
                self._execute(batch, wires, states)  # only schedules it on the model's loop
                return None
            return ("exec", batch, wires, states)
        if kind == "bls_resp":
            server.bls_response(*message[1:])
        elif kind == "cancel":
            state = server.requests.get(message[1])
            if state is not None:
                state.cancel.cancel()
        elif self.link.handle_common(message):
            pass
        elif kind == "is_ready":  # on a thread of its own: execute may be running
            threading.Thread(target=self._is_ready, args=(message[1],), daemon=True).start()
        elif kind == "finalize":
            return ("finalize", message[1])
        return None

    def _work(self, work: tuple) -> None:
        if work[0] == "exec":
            self._execute(*work[1:])
        else:
            self.runner.finalize()
            self.link.reply(work[1])
            self._exit()

    def _housekeeping(self) -> None:
        """Every 0.1 s: shared-memory blocks the model no longer holds go back to the
        server (they also go with any message), and work that has held the reader's role
        for that long gives it to the other thread. A stub quiet for 2 s checks once a
        second, and at once when work starts."""
        quiet = 0
        while True:
            if quiet < _IDLE_TICKS:
                time.sleep(_HOUSEKEEPING_S)
            elif self._work_started.wait(_IDLE_HOUSEKEEPING_S):
                quiet = 0
                continue  # work began: check its reader's role a tick from now
            self._work_started.clear()
            sent = self.link.flush_notes()
            with self._role:
                busy = self._working
                if (self._reader_working
                        and time.monotonic() - self._work_since >= _HOUSEKEEPING_S):
                    self._reader, self._reader_working = None, False
                    self._role.notify()
            quiet = 0 if (sent or busy) else quiet + 1

    def _state(self, wire: tuple) -> RequestState:
        key, cancelled = wire[0], wire[10]
        state = self.server.requests.get(key)
        if state is None:  # a rescheduled request keeps its state (and sender)
            state = self.server.requests[key] = RequestState(key, self.init["decoupled"])
        if cancelled:
            state.cancel.cancel()
        return state

    def _is_ready(self, call: int) -> None:
        self.link.reply(call, bool(self.runner is not None and self.runner.is_ready()))

    def _execute(self, batch: int, wires: list[tuple], states: list[RequestState]) -> None:
        outcomes: list[Any] = [None] * len(wires)
        requests = self.server.requests

        def done(_future: Any = None) -> None:
            for state in states:
                if state.final_sent:
                    requests.pop(state.key, None)
            self.link.send(("done", batch, outcomes))

        try:
            pb_requests = [StubRequest.from_wire(self.link, w, s) for w, s in zip(wires, states, strict=True)]
        except Exception as exc:  # tensors that could not be read: the batch fails
            error = pack_error(InternalError(f"cannot read the requests: {exc}"))
            for i, state in enumerate(states):
                state.final_sent = True
                outcomes[i] = ("e", error)
            done()
            return
        slots = [StubSlot(s, outcomes, i) for i, s in enumerate(states)]
        future = self.runner.execute(pb_requests, slots, tuple(s.cancel for s in states))
        if future is None:
            done()
        else:
            future.add_done_callback(done)
