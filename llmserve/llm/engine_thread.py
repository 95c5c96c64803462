"""The thread that owns an executor's torch work: it loads the model, allocates the KV
cache, then runs the executor loop, all under one OpenMP thread team.

Why one thread does all of it: torch's CPU ops use libgomp, which keeps one thread
pool per calling thread. As soon as the pools of a process hold more threads than
there are CPUs, libgomp cuts the time its idle workers spin before sleeping from
~300,000 to 100 iterations, so every parallel region then pays a futex wake-up. On a
2-core machine, one pool made by loading weights on the caller's thread plus one made
by the loop thread is enough to slow elementwise ops 6x and a whole decode step 1.3-1.7x
(measured in docs/BENCHMARKS.md). Loading on the loop thread leaves a single pool.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

import torch

T = TypeVar("T")

# LLMSERVE_ENGINE_THREADS overrides the intra-op thread count of engine threads.
_ENV = "LLMSERVE_ENGINE_THREADS"


def engine_num_threads() -> int:
    """The intra-op threads an engine thread uses: LLMSERVE_ENGINE_THREADS, else the
    calling thread's torch setting (so torch.set_num_threads before building an
    Executor carries over to its loop thread)."""
    value = os.environ.get(_ENV, "").strip()
    if value:
        try:
            n = int(value)
        except ValueError:
            raise ValueError(f"{_ENV} must be a positive integer, got '{value}'") from None
        if n < 1:
            raise ValueError(f"{_ENV} must be a positive integer, got '{value}'")
        return n
    return torch.get_num_threads()


class EngineThread:
    """A thread that runs submitted calls one at a time (call), until it is handed the
    long-running loop (run_loop); after that it accepts no more calls."""

    def __init__(self, name: str, num_threads: int | None = None) -> None:
        self.num_threads = num_threads or engine_num_threads()
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def call(self, fn: Callable[[], T]) -> T:
        """Runs fn on the engine thread and returns its result (or raises its error)."""
        if threading.current_thread() is self._thread:
            return fn()
        future: Future = Future()
        self._calls.put((fn, future, False))
        return future.result()

    def run_loop(self, loop: Callable[[], None]) -> None:
        """Hands the thread to loop, which runs until it returns."""
        self._calls.put((loop, None, True))

    def stop(self) -> None:
        """Ends the thread if it was never handed a loop (a failed start-up)."""
        self._calls.put(None)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _main(self) -> None:
        torch.set_num_threads(self.num_threads)
        while True:
            item = self._calls.get()
            if item is None:
                return
            fn, future, is_loop = item
            if is_loop:
                fn()
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller
                future.set_exception(exc)
