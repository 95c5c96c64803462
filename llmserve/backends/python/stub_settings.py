"""The Python backend's settings: Triton's `--backend-config=python,KEY=VALUE` keys (checked
with Triton's messages) and the per-model parameters that choose how a model runs.

  shm-default-byte-size   first shared-memory segment of a stub (default 1 MiB, >= 1 MiB)
  shm-growth-byte-size    each further segment (default 1 MiB, > 0)
  shm-region-prefix-name  names the segments (memfd names, seen in /proc/PID/maps)
  stub-timeout-seconds    a stub's start-up, is_ready and finalize, and an execute that
                          makes no progress, are bounded by it (default 30, > 0)
  thread-pool-size        threads serving stubs' blocking calls (model control; default 32)
  shm_message_queue_size  accepted; llmserve's channel has no fixed-size queue
  execution-mode          llmserve's: stub (default, Triton's) or in_process, for models
                          whose PYTHON_EXECUTION_MODE parameter does not choose
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from llmserve.core.errors import InvalidArgument

log = logging.getLogger(__name__)

MIB = 1024 * 1024
MODES = ("stub", "in_process")
MODE_PARAMETER = "PYTHON_EXECUTION_MODE"
ENV_PARAMETER = "EXECUTION_ENV_PATH"


@dataclass(frozen=True, slots=True)
class PythonBackendSettings:
    shm_default_byte_size: int = MIB
    shm_growth_byte_size: int = MIB
    shm_region_prefix_name: str = "triton_python_backend_shm_region_"
    stub_timeout_seconds: float = 30.0
    thread_pool_size: int = 32
    execution_mode: str = "stub"


def _integer(key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise InvalidArgument(f"--backend-config python,{key}: '{value}' is not an integer") from None


def parse_settings(config: dict[str, str]) -> PythonBackendSettings:
    """The settings from `--backend-config python,...` (raises InvalidArgument)."""
    values: dict[str, Any] = {}
    if "shm-default-byte-size" in config:
        size = _integer("shm-default-byte-size", config["shm-default-byte-size"])
        if size < MIB:  # Triton's check (its message says 4 MiBs, its limit is 1 MiB)
            raise InvalidArgument("shm-default-byte-size can't be smaller than 1 MiB")
        values["shm_default_byte_size"] = size
    if "shm-growth-byte-size" in config:
        size = _integer("shm-growth-byte-size", config["shm-growth-byte-size"])
        if size <= 0:
            raise InvalidArgument("shm-growth-byte-size can't be smaller than or equal to zero.")
        values["shm_growth_byte_size"] = size
    if "stub-timeout-seconds" in config:
        seconds = _integer("stub-timeout-seconds", config["stub-timeout-seconds"])
        if seconds <= 0:
            raise InvalidArgument("stub-timeout-seconds can't be smaller than or equal to zero.")
        values["stub_timeout_seconds"] = float(seconds)
    if "thread-pool-size" in config:
        count = _integer("thread-pool-size", config["thread-pool-size"])
        if count < 1:
            raise InvalidArgument("thread-pool-size can't be less than 1.")
        values["thread_pool_size"] = count
    if "shm-region-prefix-name" in config:
        prefix = config["shm-region-prefix-name"]
        if not prefix:
            raise InvalidArgument("shm-region-prefix-name must at least contain one character.")
        values["shm_region_prefix_name"] = prefix
    if "shm_message_queue_size" in config:
        _integer("shm_message_queue_size", config["shm_message_queue_size"])
    if "execution-mode" in config:
        values["execution_mode"] = _mode(config["execution-mode"], "--backend-config python,execution-mode")
    return PythonBackendSettings(**values)


_cache: dict[int, tuple[Any, PythonBackendSettings]] = {}


def settings_of(options: Any) -> PythonBackendSettings:
    """The settings of a server's options (parsed once per options object)."""
    hit = _cache.get(id(options))
    if hit is not None and hit[0] is options:
        return hit[1]
    config = options.backend_config.get("python", {})
    settings = parse_settings(config)
    if "shm_message_queue_size" in config:
        log.warning("--backend-config python,shm_message_queue_size is accepted but has no "
                    "effect: llmserve's stub channel has no fixed-size message queue")
    _cache[id(options)] = (options, settings)
    return settings


def _mode(value: str, where: str) -> str:
    mode = value.strip().lower().replace("-", "_")
    if mode not in MODES:
        raise InvalidArgument(f"{where} must be 'stub' or 'in_process', got '{value}'")
    return mode


def parameter(config: Any, key: str) -> str | None:
    """A model config parameter's string value (None when absent)."""
    if key in config.parameters:
        return config.parameters[key].string_value
    return None


def execution_mode(config: Any, settings: PythonBackendSettings) -> str:
    """stub or in_process: the model's PYTHON_EXECUTION_MODE, else the server's default.
    A model with EXECUTION_ENV_PATH always runs in a stub (its own interpreter)."""
    value = parameter(config, MODE_PARAMETER)
    mode = _mode(value, f"parameter {MODE_PARAMETER} of model '{config.name}'") if value else None
    if parameter(config, ENV_PARAMETER):
        if mode == "in_process":
            raise InvalidArgument(f"model '{config.name}': {ENV_PARAMETER} needs its own "
                                  f"interpreter, so {MODE_PARAMETER} cannot be in_process")
        return "stub"
    return mode or settings.execution_mode
