"""Hands the C heap's free memory back to the operating system now and then (glibc's
malloc_trim), from the engine thread: when it goes idle, and every TRIM_INTERVAL_S
while it steps.

Why: an engine step allocates tensors of a new size almost every time (rows vary with
the batch, context with the sequences). glibc raises its mmap threshold as large blocks
are freed, so such tensors come to live in the heap and arenas, and what they free
stays there, fragmented: over an hour of streamed requests an engine process held 250
MB more than it used (malloc_stats: 657 MB taken from the system, 384 MB in use), and
the server's memory kept growing in steps (issue 18, docs/RELIABILITY.md). malloc_trim(0)
returns every free page of every arena; it took milliseconds here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

TRIM_INTERVAL_S = 10.0  # at most this long between trims while the engine is busy


def _find_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim  # glibc only (not musl, not macOS)
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


class HeapTrimmer:
    """Calls malloc_trim(0) after work: on idle(), and on stepped() once TRIM_INTERVAL_S
    has passed since the last trim. Does nothing where the C library has no
    malloc_trim."""

    def __init__(self, interval_s: float = TRIM_INTERVAL_S,
                 trim: Callable[[int], int] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._trim = trim if trim is not None else _find_malloc_trim()
        self._clock = clock
        self._last = clock()
        self._dirty = False  # work done since the last trim
        self.trims = 0

    def stepped(self) -> None:
        """The engine ran a step."""
        self._dirty = True
        if self._clock() - self._last >= self.interval_s:
            self.trim()

    def idle(self) -> None:
        """The engine is about to wait for work."""
        if self._dirty:
            self.trim()

    def trim(self) -> None:
        self._dirty = False
        self._last = self._clock()
        if self._trim is None:
            return
        start = time.perf_counter()
        self._trim(0)
        self.trims += 1
        logger.debug("malloc_trim: %.1f ms", (time.perf_counter() - start) * 1e3)
