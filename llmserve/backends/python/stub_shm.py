"""Tensors between the server and a stub process. Each side owns an arena of shared
memory segments (memfd, Triton's shm-default-byte-size grown by shm-growth-byte-size)
that it writes the tensors it sends into; the other side maps a segment once and reads
those tensors as numpy views, without a copy. A block goes back to its owner once the
last array over it is garbage. Small tensors ride inline in the message (still read as a
view of the received buffer); BYTES tensors travel as lists of bytes.

memfd segments have no name to leak: they vanish with the last process that maps them.
"""

from __future__ import annotations

import bisect
import collections
import mmap
import os
import pickle
import threading
import weakref
from collections.abc import Callable

import numpy as np

from llmserve.core.datatypes import as_bytes

_ALIGN = 64
INLINE_MAX_BYTES = 4096  # tensors up to this size ride in the message itself


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


class _Segment:
    __slots__ = ("id", "size", "fd", "mm", "free")

    def __init__(self, seg_id: int, size: int, name: str):
        self.id, self.size = seg_id, size
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(self.fd, size)
        self.mm = mmap.mmap(self.fd, size)
        self.free: list[list[int]] = [[0, size]]  # [offset, length], sorted by offset

    def take(self, n: int) -> int | None:
        for i, (off, length) in enumerate(self.free):
            if length >= n:
                if length == n:
                    del self.free[i]
                else:
                    self.free[i] = [off + n, length - n]
                return off
        return None

    def give(self, off: int, n: int) -> None:
        i = bisect.bisect_left(self.free, [off, 0])
        self.free.insert(i, [off, n])
        if i + 1 < len(self.free) and off + n == self.free[i + 1][0]:  # merge the next
            self.free[i][1] += self.free.pop(i + 1)[1]
        if i > 0 and self.free[i - 1][0] + self.free[i - 1][1] == off:  # merge the previous
            self.free[i - 1][1] += self.free.pop(i)[1]


class Arena:
    """The segments this process writes into; announce(seg_id, size, fd) is called once
    per new segment, before any message can name it."""

    def __init__(self, prefix: str, default_size: int, growth_size: int,
                 announce: Callable[[int, int, int], None]):
        self.prefix = prefix
        self.default_size, self.growth_size = default_size, growth_size
        self._announce = announce
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._sizes: dict[tuple[int, int], int] = {}

    def alloc(self, nbytes: int) -> tuple[int, int, memoryview]:
        n = _round_up(max(nbytes, 1), _ALIGN)
        with self._lock:
            for seg in self._segments:
                off = seg.take(n)
                if off is not None:
                    break
            else:
                size = self.default_size if not self._segments else self.growth_size
                seg = _Segment(len(self._segments), max(_round_up(n, mmap.PAGESIZE), size),
                               f"{self.prefix}{len(self._segments)}")
                self._segments.append(seg)
                self._announce(seg.id, seg.size, seg.fd)
                off = seg.take(n)
                assert off is not None
            self._sizes[(seg.id, off)] = n
        return seg.id, off, memoryview(seg.mm)[off:off + nbytes]

    def free(self, blocks: list[tuple[int, int]]) -> None:
        with self._lock:
            for seg_id, off in blocks:
                n = self._sizes.pop((seg_id, off), None)
                if n is not None:
                    self._segments[seg_id].give(off, n)

    def in_use(self) -> int:
        with self._lock:
            return sum(self._sizes.values())

    def size(self) -> int:
        with self._lock:
            return sum(s.size for s in self._segments)

    def close(self) -> None:
        """Drop this side's handles; mappings the peer or live views hold stay valid."""
        with self._lock:
            for seg in self._segments:
                os.close(seg.fd)
                seg.fd = -1


class PeerSegments:
    """The other side's segments, mapped on announcement; released blocks collect in
    `released` until the owner of the channel sends them back."""

    def __init__(self) -> None:
        self._maps: dict[int, mmap.mmap] = {}
        self.released: collections.deque[tuple[int, int]] = collections.deque()

    def add(self, seg_id: int, size: int, fd: int) -> None:
        try:
            self._maps[seg_id] = mmap.mmap(fd, size)
        finally:
            os.close(fd)

    def array(self, seg_id: int, off: int, nbytes: int, dtype: str, shape: tuple) -> np.ndarray:
        base = np.frombuffer(self._maps[seg_id], np.uint8, nbytes, off)
        weakref.finalize(base, self.released.append, (seg_id, off))
        return base.view(np.dtype(dtype)).reshape(shape)

    def take_released(self) -> list[tuple[int, int]]:
        out = []
        while self.released:
            out.append(self.released.popleft())
        return out


# -- tensors on the wire ---------------------------------------------------------------------
# (name, datatype, dtype str, shape, payload); payload: an out-of-band buffer (inline),
# ("s", segment, offset, nbytes) in the sender's arena, or a list of bytes (BYTES)


def pack_tensor(name: str, datatype: str, data: np.ndarray, arena: Arena | None) -> tuple:
    if data.dtype.kind in ("O", "S", "U"):
        items = [as_bytes(x) for x in data.reshape(-1).tolist()]
        return name, datatype, "|O", data.shape, items
    data = np.ascontiguousarray(data)
    if data.nbytes <= INLINE_MAX_BYTES or arena is None:
        return name, datatype, data.dtype.str, data.shape, pickle.PickleBuffer(data)
    seg_id, off, view = arena.alloc(data.nbytes)
    np.frombuffer(view, np.uint8)[:] = data.reshape(-1).view(np.uint8)
    return name, datatype, data.dtype.str, data.shape, ("s", seg_id, off, data.nbytes)


def unpack_tensor(wire: tuple, peer: PeerSegments) -> tuple[str, str, np.ndarray]:
    name, datatype, dtype, shape, payload = wire
    shape = tuple(shape)
    if isinstance(payload, list):
        data = np.empty(len(payload), dtype=np.object_)
        data[:] = payload
        return name, datatype, data.reshape(shape)
    if isinstance(payload, tuple):
        _, seg_id, off, nbytes = payload
        return name, datatype, peer.array(seg_id, off, nbytes, dtype, shape)
    return name, datatype, np.frombuffer(payload, np.dtype(dtype)).reshape(shape)
