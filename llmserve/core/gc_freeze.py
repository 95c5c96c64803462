"""Keeps CPython's cyclic garbage collector off the heap a process builds while loading.

Loading leaves a large heap that lives until the process ends: torch, transformers and
the tokenizers, the frontends' routes and schemas, the model set's configuration. A full
(generation 2) collection walks every tracked object of it. In the server under 32
streams such a collection took 380-770 ms, and the event loop answered nothing
meanwhile: every stream in flight stalled and every new request waited
(docs/BENCHMARKS.md, session 9). gc.freeze() moves every object tracked now into a
permanent generation that no collection walks, so a full collection then costs only
what was allocated since, and reference counting still frees frozen objects as usual.

freeze_loaded_heap() runs where a process has finished loading: the server after its
models load (and after each later load), a Python model's stub process after
initialize, the engine process once its executor is built. Cyclic garbage that exists
at that moment is never collected, so a process collects first where it can afford the
pause (collect=True; the server's later loads skip it so as not to stall serving), and
the server thaws, collects and freezes again after it unloads a model
(refreeze_after_unload), so an unloaded model's cycles do not stay frozen.
LLMSERVE_GC_FREEZE=0 turns it off.

watch_pauses() logs a warning when one collection stops the process for longer than
LLMSERVE_GC_WARN_MS (default 100; 0: never), so a stall of this kind shows in the log.
"""

from __future__ import annotations

import gc
import logging
import os
import time

from llmserve.core.booleans import bool_word
from llmserve.core.env_numbers import env_number

logger = logging.getLogger(__name__)

ENV = "LLMSERVE_GC_FREEZE"
WARN_ENV = "LLMSERVE_GC_WARN_MS"
DEFAULT_WARN_MS = 100.0
WARN_EVERY_S = 60.0  # at most one warning a minute, counting the slow ones between


def enabled() -> bool:
    value = os.environ.get(ENV, "")
    if not value.strip():
        return True
    parsed = bool_word(value)
    if parsed is None:
        logger.warning("%s=%r is neither 0 nor 1; the loaded heap is frozen", ENV, value)
        return True
    return parsed


def freeze_loaded_heap(what: str, collect: bool = True) -> int:
    """Freeze every object tracked now; returns how many are frozen in all (0 when
    turned off). collect: run a full collection first. Then starts watch_pauses."""
    frozen = _freeze(what, collect) if enabled() else 0
    watch_pauses(what)  # after our own collection, which is no stall to warn of
    return frozen


def _freeze(what: str, collect: bool) -> int:
    if collect:
        gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    logger.debug("%s: %d objects kept out of garbage collection", what, frozen)
    return frozen


class _PauseWatch:
    """A gc callback: times each collection, warns of those over the threshold."""

    def __init__(self, what: str, threshold_s: float) -> None:
        self.what, self.threshold_s = what, threshold_s
        self.started = self.started_cpu = 0.0
        self.last_warning = -WARN_EVERY_S
        self.unreported = 0

    def __call__(self, phase: str, info: dict) -> None:
        now = time.perf_counter()
        if phase == "start":
            self.started, self.started_cpu = now, time.thread_time()
            return
        pause = now - self.started
        if pause < self.threshold_s:
            return
        self.unreported += 1
        if now - self.last_warning < WARN_EVERY_S:
            return
        cpu = time.thread_time() - self.started_cpu
        logger.warning("%s: a generation-%d garbage collection stopped the process for %.0f "
                       "ms (%.0f ms of CPU, %d objects freed; %d collection(s) over %.0f ms "
                       "since the last warning; %s)", self.what, info.get("generation", -1),
                       pause * 1000, cpu * 1000, info.get("collected", 0), self.unreported,
                       self.threshold_s * 1000, WARN_ENV)
        self.last_warning, self.unreported = now, 0


def refreeze_after_unload(what: str) -> None:
    """A model was unloaded: what it leaves in reference cycles was frozen with the rest
    and would never be freed (an in-process engine's model and caches among it). Thaw
    the heap, collect it in full (one pause, as at load) and freeze what is left."""
    if enabled():
        gc.unfreeze()
        _freeze(what, collect=True)


def _warn_ms() -> float:
    try:
        value = env_number(WARN_ENV, float, lambda ms: ms >= 0, "a number of milliseconds >= 0")
    except ValueError as exc:
        logger.warning("%s; using %.0f", exc, DEFAULT_WARN_MS)
        return DEFAULT_WARN_MS
    return DEFAULT_WARN_MS if value is None else value


def watch_pauses(what: str) -> None:
    """Warn when a collection in this process takes longer than LLMSERVE_GC_WARN_MS.
    Installed once per process."""
    threshold_ms = _warn_ms()
    if threshold_ms <= 0 or any(isinstance(cb, _PauseWatch) for cb in gc.callbacks):
        return
    gc.callbacks.append(_PauseWatch(what, threshold_ms / 1000))
