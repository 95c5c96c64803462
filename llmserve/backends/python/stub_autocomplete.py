"""auto_complete_config in a short-lived stub process, for models that run in stubs:
a model whose import crashes the interpreter fails its own load, not the server, and a
model with EXECUTION_ENV_PATH is imported by the interpreter of its environment."""

from __future__ import annotations

import concurrent.futures
import logging
from pathlib import Path
from typing import Any

from llmserve.backends.python.stub_env import interpreter_for
from llmserve.backends.python.stub_process import StubProcess
from llmserve.backends.python.stub_settings import settings_of
from llmserve.core.errors import Unavailable


class _Collector:
    """The stub's side of one auto-complete: its answer, its logs, its exit."""

    def __init__(self, process: StubProcess):
        self.process = process
        self.answer: concurrent.futures.Future = concurrent.futures.Future()

    def on_message(self, message: tuple) -> None:
        if message[0] == "auto_complete_done" and not self.answer.done():
            self.answer.set_result(message[1:])
        elif message[0] == "log":
            _, name, level, text = message
            logging.getLogger(name).log(level, "%s", text)
        else:
            self.process.link.handle_common(message)

    def on_exit(self, reason: str) -> None:
        if not self.answer.done():
            self.answer.set_exception(Unavailable(
                f"the stub process running auto_complete_config exited ({reason})"))

    def hang_deadline(self) -> float | None:
        return None

    def on_hang(self) -> None:
        return None


def auto_complete_in_stub(config: Any, config_dict: dict, model_file: Path,
                          options: Any) -> tuple[dict | None, tuple | None]:
    """(the completed config as Triton's JSON dict, None) or (None, (error type, message,
    line of model.py)); raises Unavailable when the stub cannot run."""
    settings = settings_of(options)
    interpreter = interpreter_for(config, model_file.parent.parent)
    process = StubProcess(f"{config.name}_auto_complete", interpreter, settings)
    collector = _Collector(process)
    try:
        process.start({
            "mode": "auto_complete", "model_file": str(model_file), "model_name": config.name,
            "config": config_dict, "decoupled": False,
            "log_level": logging.getLogger().getEffectiveLevel(),
            "shm_prefix": process.link.arena.prefix + "stub_",
            "shm_default": settings.shm_default_byte_size,
            "shm_growth": settings.shm_growth_byte_size,
        }, collector)
        return collector.answer.result()
    finally:
        process.stop(settings.stub_timeout_seconds)
