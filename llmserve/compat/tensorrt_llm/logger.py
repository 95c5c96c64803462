"""tensorrt_llm.logger: TensorRT-LLM's logger (severities, set_level, TLLM_LOG_LEVEL) on
the `TRT-LLM` logging logger, so its messages land in the server's log.

`import tensorrt_llm.logger as logger` and `from tensorrt_llm.logger import logger` both
work: the module has the Logger instance's methods as functions too.
"""

from __future__ import annotations

import logging
import os

_LEVELS = {
    "internal_error": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "verbose": logging.DEBUG,
    "debug": logging.DEBUG,
}


class Logger:
    INTERNAL_ERROR = "[F]"
    ERROR = "[E]"
    WARNING = "[W]"
    INFO = "[I]"
    VERBOSE = "[V]"

    def __init__(self) -> None:
        self._logger = logging.getLogger("TRT-LLM")
        env = os.environ.get("TLLM_LOG_LEVEL")
        self._set_from_env = env is not None
        if env is not None:
            if env.lower() in _LEVELS:
                self._logger.setLevel(_LEVELS[env.lower()])
            else:
                self.warning(f"Requested log level {env} is invalid. Using 'warning' instead")
                self._logger.setLevel(logging.WARNING)

    def log(self, severity: str, msg: str) -> None:
        level = {self.INTERNAL_ERROR: logging.CRITICAL, self.ERROR: logging.ERROR,
                 self.WARNING: logging.WARNING, self.INFO: logging.INFO,
                 self.VERBOSE: logging.DEBUG}.get(severity)
        if level is None:
            raise AttributeError(f"No such severity: {severity}")
        self._logger.log(level, "[TRT-LLM] %s %s", severity, msg)

    def critical(self, msg: str) -> None:
        self.log(self.INTERNAL_ERROR, msg)

    fatal = critical

    def error(self, msg: str) -> None:
        self.log(self.ERROR, msg)

    def warning(self, msg: str) -> None:
        self.log(self.WARNING, msg)

    def info(self, msg: str) -> None:
        self.log(self.INFO, msg)

    def debug(self, msg: str) -> None:
        self.log(self.VERBOSE, msg)

    def set_level(self, min_severity: str) -> None:
        if self._set_from_env:
            self.warning("Logger level already set from environment. "
                         f"Discard new verbosity: {min_severity}")
            return
        self._logger.setLevel(_LEVELS[min_severity])


logger = Logger()
critical = fatal = logger.critical
error = logger.error
warning = logger.warning
info = logger.info
debug = logger.debug
set_level = logger.set_level
