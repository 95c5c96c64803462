"""The thread that steps every LLM executor of the process, under one OpenMP thread
team.

Why one thread steps them all: torch's CPU ops use libgomp, which keeps one thread
pool per calling thread. As soon as the pools of a process hold more threads than
there are CPUs, libgomp cuts the time its idle workers spin before sleeping from
~300,000 to 100 iterations, so every parallel region then pays a futex wake-up. On a
2-core machine, one pool made by loading weights on the caller's thread plus one made
by a loop thread is enough to slow elementwise ops 6x and a whole decode step 1.3-1.7x
(measured in docs/BENCHMARKS.md); so is one loop thread per executor. One engine thread
for everything leaves a single steady pool.

Model loads are the exception: they run on a short-lived loader thread (load()), so
that loading one model never stalls the executors already serving. The loader's pool
exists only while it loads: libgomp frees a thread's pool when the thread exits, and
the engine's steps run at their old speed afterwards (measured: demo-model decode
inter-token latency before and after loading an 80M model beside it).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Protocol, TypeVar

import torch

from llmserve.core.env_numbers import env_number
from llmserve.llm.heap_trim import HeapTrimmer

T = TypeVar("T")
logger = logging.getLogger(__name__)

# LLMSERVE_ENGINE_THREADS overrides the intra-op thread count of the engine thread.
_ENV = "LLMSERVE_ENGINE_THREADS"
# LLMSERVE_ENGINE_NICE: the nice value of the engine thread and its OpenMP team (unset: the
# process's own; `llmserve serve` sets -10, see cli.reserve_frontend_cpu).
NICE_ENV = "LLMSERVE_ENGINE_NICE"
IDLE_POLL_S = 0.005  # when work exists but nothing fits this step


def _env_int(name: str, low: int, high: int | None, what: str) -> int | None:
    """The integer in environment variable `name` (None when unset or blank); ValueError
    naming the variable when it is not one within [low, high]."""
    return env_number(name, int, lambda n: n >= low and (high is None or n <= high), what)


def engine_num_threads() -> int:
    """The intra-op threads an engine thread uses: LLMSERVE_ENGINE_THREADS, else the
    calling thread's torch setting (so torch.set_num_threads before building an
    Executor carries over to its loop thread)."""
    n = _env_int(_ENV, 1, None, "a positive integer")
    return torch.get_num_threads() if n is None else n


def engine_nice() -> int | None:
    """LLMSERVE_ENGINE_NICE as a nice value (-20..19), or None when unset or 0 (the
    engine keeps the priority of the thread that starts it)."""
    return _env_int(NICE_ENV, -20, 19, "an integer from -20 to 19") or None


def apply_engine_nice(n: int | None) -> bool:
    """Gives the calling thread nice value n (engine_nice(): LLMSERVE_ENGINE_NICE); the
    OpenMP team it starts later inherits it. True when applied.

    Why: on a small CPU machine the engine thread is the throughput bottleneck, and the
    scheduler otherwise shares its core fairly with every other runnable thread (HTTP,
    tokenizers, Python models, a co-located client). The engine cannot take more CPUs
    than its threads, which `llmserve serve` keeps one below the machine's, so the rest
    still have a CPU of their own. A lower nice value needs CAP_SYS_NICE (or
    RLIMIT_NICE); without it the engine keeps the process's priority and a warning
    says so. Only Linux gives a thread a nice value of its own: elsewhere this logs that
    the value is not applied.
    """
    if n is None:
        return False
    if not sys.platform.startswith("linux"):
        logger.info("engine thread: %s=%d not applied: per-thread priority is Linux only",
                    NICE_ENV, n)
        return False
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), n)
    except OSError as exc:
        logger.warning("engine thread: %s=%d not applied (%s), so it runs at the process's "
                       "priority; a negative nice value needs CAP_SYS_NICE or RLIMIT_NICE "
                       "(%s=0 keeps it so without this warning)",
                       NICE_ENV, n, exc.strerror or exc, NICE_ENV)
        return False
    logger.info("engine thread: nice %d", n)
    return True


class EngineClient(Protocol):
    """What the worker steps: an executor."""

    def _wants_tick(self) -> bool: ...  # called with the worker's cond held

    def _tick(self) -> bool: ...  # one round of work; True when it made progress

    def _crashed(self, exc: BaseException) -> None: ...  # _tick raised: fail, stop


class EngineWorker:
    """The process's engine thread. It steps every registered executor in turn, one
    step each per round, so that several executors (a BLS draft and target pair,
    several LLMs) share one OpenMP pool. Executors guard their queues with the
    worker's condition, which wakes it."""

    _shared: EngineWorker | None = None
    _shared_lock = threading.Lock()

    def __init__(self, name: str = "llmserve-engine", num_threads: int | None = None) -> None:
        self.num_threads = num_threads or engine_num_threads()
        self.nice = engine_nice()  # a bad value fails here, on the caller's thread
        self.cond = threading.Condition()
        self._clients: list[EngineClient] = []
        self._heap = HeapTrimmer()  # used by the engine thread only
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    @classmethod
    def _forget_after_fork(cls) -> None:
        # a forked child has no engine thread: its first executor starts a new one
        cls._shared = None
        cls._shared_lock = threading.Lock()

    @classmethod
    def shared(cls) -> EngineWorker:
        """The process-wide worker, started on first use with the caller's thread count
        (engine_num_threads())."""
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def load(self, fn: Callable[[], T], name: str = "llmserve-load") -> T:
        """Runs fn (a model load) on a fresh thread with the engine's intra-op thread
        count and returns its result (or raises its error). The engine thread goes on
        stepping the registered executors meanwhile; the thread, and its OpenMP pool,
        end with the load."""
        outcome: list = []

        def run() -> None:
            torch.set_num_threads(self.num_threads)
            try:
                outcome.append((True, fn()))
            except BaseException as exc:  # noqa: BLE001 - raised again in the caller
                outcome.append((False, exc))

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        thread.join()
        ok, value = outcome[0]
        if not ok:
            raise value
        return value

    def register(self, client: EngineClient) -> None:
        with self.cond:
            self._clients.append(client)
            self.cond.notify_all()

    def unregister(self, client: EngineClient) -> None:
        with self.cond:
            if client in self._clients:
                self._clients.remove(client)

    def _main(self) -> None:
        apply_engine_nice(self.nice)  # before the OpenMP team exists: it inherits this
        torch.set_num_threads(self.num_threads)
        idle = False
        while True:
            with self.cond:
                if idle:  # work exists but nothing could run: poll again shortly
                    self.cond.wait(IDLE_POLL_S)
                waiting = not any(c._wants_tick() for c in self._clients)
            if waiting:
                self._heap.idle()  # outside the lock: enqueues need not wait for it
            with self.cond:
                while not any(c._wants_tick() for c in self._clients):
                    self.cond.wait()
                clients = list(self._clients)
            progressed = False
            for client in clients:
                with self.cond:
                    wants = client._wants_tick()
                if not wants:
                    continue
                try:
                    progressed |= client._tick()
                except Exception as exc:  # one executor's bug must not stop the others
                    logger.exception("engine: an executor failed; stopping it")
                    self.unregister(client)
                    client._crashed(exc)
                    progressed = True
            idle = not progressed
            if progressed:
                self._heap.stepped()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=EngineWorker._forget_after_fork)
