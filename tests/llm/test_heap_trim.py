"""HeapTrimmer: when the engine thread hands free heap memory back (idle, and every
interval while busy), and that malloc_trim does give fragmented heap memory back."""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import pytest

from llmserve.llm.heap_trim import HeapTrimmer, _find_malloc_trim


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_trims_when_idle_after_work_and_at_most_every_interval_while_busy():
    calls: list[int] = []
    clock = Clock()
    heap = HeapTrimmer(interval_s=10.0, trim=lambda pad: calls.append(pad) or 1, clock=clock)
    heap.idle()
    assert calls == []  # nothing ran since the start: nothing to give back
    for t in (1.0, 5.0, 9.9):
        clock.now = t
        heap.stepped()
    assert calls == []
    clock.now = 10.0
    heap.stepped()
    assert calls == [0]
    heap.idle()
    assert calls == [0]  # trimmed just now, no step since
    clock.now = 11.0
    heap.stepped()
    heap.idle()
    heap.idle()
    assert calls == [0, 0] and heap.trims == 2


def test_without_malloc_trim_it_does_nothing():
    heap = HeapTrimmer(trim=None)
    heap._trim = None  # as on a C library without malloc_trim
    heap.stepped()
    heap.idle()
    assert heap.trims == 0


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not sys.platform.startswith("linux") or _find_malloc_trim() is None,
                    reason="glibc's malloc_trim only")
def test_malloc_trim_returns_fragmented_free_heap_memory():
    # Interleave 64 KiB blocks (below the mmap threshold: they come from the heap), free
    # every other one, so no free run reaches the heap's top and nothing is returned.
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size, count = 64 * 1024, 2048  # 128 MiB
    blocks = []
    for _ in range(count):
        p = libc.malloc(size)
        ctypes.memset(p, 1, size)  # touch it: resident
        blocks.append(p)
    full = _rss_kb()
    for p in blocks[1::2]:
        libc.free(p)
    freed = _rss_kb()
    HeapTrimmer().trim()
    trimmed = _rss_kb()
    for p in blocks[::2]:
        libc.free(p)
    # 64 MiB is free inside the heap: free() kept it, the trim gives most of it back
    assert full - freed < 16 * 1024, (full, freed)
    assert freed - trimmed > 32 * 1024, (full, freed, trimmed)
