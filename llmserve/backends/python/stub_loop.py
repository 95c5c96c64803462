"""The stub's work: load the model, then serve the server's messages until finalize.
See stub_main.py for the process around it.

Messages from the server: ("exec", batch, [request]), ("cancel", key), ("bls_resp", call,
item, end), ("is_ready", call), ("finalize", call), plus Link's seg/free/reply.
To the server: ("init_done", error, is_async, has_is_ready), ("resp", key, response, final),
("done", batch, [outcome]), ("bls", call, request, decoupled), ("bls_cancel", call),
("call", call, what, *args), ("metric_op", ...), ("log", name, level, text).
"""

from __future__ import annotations

import importlib
import logging
import os
import queue
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

log = logging.getLogger("llmserve.backends.python.stub")
_RETURN_S = 0.1


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
        self.work: queue.SimpleQueue = queue.SimpleQueue()
        self.runner: ModelRunner | None = None

    def run(self) -> None:
        root = logging.getLogger()
        root.handlers[:] = [ForwardingLogHandler(self.link)]
        root.setLevel(self.init["log_level"])
        sys.modules["triton_python_backend_utils"] = importlib.import_module(
            "llmserve.backends.python.stub_pb_utils")
        context.set_default_server(self.server)
        threading.Thread(target=self._read, name="llmserve-stub-reader", daemon=True).start()
        threading.Thread(target=self._return_released, name="llmserve-stub-shm",
                         daemon=True).start()
        if self.init["mode"] == "auto_complete":
            self._auto_complete()
            self._exit()
        error = self._load()
        runner = self.runner
        self.link.send(("init_done", error, bool(runner and runner.is_async),
                        bool(runner and runner.has_is_ready)))
        if error is not None:
            self._exit()
        while True:
            item = self.work.get()
            if item[0] == "exec":
                self._execute(*item[1:])
            elif item[0] == "finalize":
                self.runner.finalize()
                self.link.reply(item[1])
                self._exit()

    def _exit(self) -> None:
        self.link.flush_released()
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
    def _read(self) -> None:
        server, link = self.server, self.link
        try:
            while True:
                message, fds = link.channel.recv()
                kind = message[0]
                if kind == "exec":
                    _, batch, wires = message
                    self.work.put(("exec", batch, wires, [self._state(w) for w in wires]))
                elif kind == "bls_resp":
                    server.bls_response(*message[1:])
                elif kind == "cancel":
                    state = server.requests.get(message[1])
                    if state is not None:
                        state.cancel.cancel()
                elif link.handle_common(message, fds):
                    pass
                elif kind == "is_ready":  # off the main thread: execute may be running
                    threading.Thread(target=self._is_ready, args=(message[1],), daemon=True).start()
                elif kind == "finalize":
                    self.work.put(("finalize", message[1]))
        except ChannelClosed:
            os._exit(0)  # the server is gone

    def _return_released(self) -> None:
        """Shared-memory blocks the server wrote and the model no longer holds go back to
        the server with the next message, or within 0.1 s when the stub is quiet."""
        while True:
            time.sleep(_RETURN_S)
            self.link.flush_released()

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
