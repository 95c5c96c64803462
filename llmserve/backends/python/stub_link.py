"""One end of the server <-> stub connection, the same on both sides: the channel, this
side's shared-memory arena and the peer's mapped segments, numbered calls answered by
a ("reply", call, value, error) message, and the return of released blocks.

Every message is a tuple whose first item names its kind. The kinds both sides handle
here: ("seg", id, size) with the segment's fd, ("free", [(segment, offset), ...]) and
("reply", call, value, error). The stub also notes ("bls_read", [call, ...]): the BLS
responses its model took, so that the server's producer knows the reader's pace. Frees
and read notes ride in the same write as the next message (or leave within 0.1 s).
"""

from __future__ import annotations

import concurrent.futures
import itertools
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from llmserve.backends.python.stub_channel import Channel, ChannelClosed
from llmserve.backends.python.stub_shm import Arena, PeerSegments, pack_tensor, unpack_tensor


class RemoteError(Exception):
    """A call the peer answered with an error: (message, code) as the peer gave them."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.message, self.code = message, code


class Link:
    def __init__(self, channel: Channel, shm_prefix: str, shm_default: int, shm_growth: int):
        self.channel = channel
        self.arena = Arena(shm_prefix, shm_default, shm_growth, self._announce)
        self.peer = PeerSegments()
        self._ids = itertools.count(1)
        self._calls: dict[int, concurrent.futures.Future] = {}
        self._calls_lock = threading.Lock()
        self.closed = False
        # called before a call waits for its reply: the stub makes sure someone reads
        self.before_wait: Callable[[], None] | None = None
        self._reads: list[int] = []
        self._reads_lock = threading.Lock()

    # -- sending --------------------------------------------------------------------------
    def send(self, message: tuple) -> None:
        notes = self._notes()
        if notes:
            notes.append(message)
            self.channel.send_many(notes)
        else:
            self.channel.send(message)

    def note_read(self, call: int) -> None:
        """The model took one response of BLS call `call` (told with the next message)."""
        with self._reads_lock:
            self._reads.append(call)

    def flush_notes(self) -> bool:
        """Sends pending frees and read notes; True if there were any."""
        notes = self._notes()
        if notes:
            self.channel.send_many(notes)
        return bool(notes)

    def _notes(self) -> list[tuple]:
        notes: list[tuple] = []
        if self.peer.released:
            notes.append(("free", self.peer.take_released()))
        if self._reads:
            with self._reads_lock:
                reads, self._reads = self._reads, []
            notes.append(("bls_read", reads))
        return notes

    def _announce(self, seg_id: int, size: int, fd: int) -> None:
        self.channel.send(("seg", seg_id, size), (fd,))

    def pack(self, name: str, datatype: str, data: np.ndarray) -> tuple:
        return pack_tensor(name, datatype, data, self.arena)

    def unpack(self, wire: tuple) -> tuple[str, str, np.ndarray]:
        return unpack_tensor(wire, self.peer)

    # -- calls ----------------------------------------------------------------------------
    def start_call(self) -> tuple[int, concurrent.futures.Future]:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._calls_lock:
            if self.closed:
                fut.set_exception(ChannelClosed("the peer is gone"))
                return 0, fut
            call = next(self._ids)
            self._calls[call] = fut
        return call, fut

    def call(self, kind: str, *args: Any, timeout: float | None = None) -> Any:
        """Send (kind, call, *args) and wait for the reply's value; RemoteError if the peer
        answered with an error, ChannelClosed if it went away, TimeoutError on timeout."""
        call, fut = self.start_call()
        if call:
            if self.before_wait is not None:
                self.before_wait()
            self.send((kind, call, *args))
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            with self._calls_lock:
                self._calls.pop(call, None)
            raise TimeoutError(f"no reply to '{kind}' within {timeout} s") from None

    def reply(self, call: int, value: Any = None, error: tuple[str, int] | None = None) -> None:
        self.send(("reply", call, value, error))

    # -- receiving ------------------------------------------------------------------------
    def handle_common(self, message: tuple) -> bool:
        """Handle the kinds every side knows; False for the others."""
        kind = message[0]
        if kind == "reply":
            _, call, value, error = message
            with self._calls_lock:
                fut = self._calls.pop(call, None)
            if fut is not None:
                if error is None:
                    fut.set_result(value)
                else:
                    fut.set_exception(RemoteError(*error))
            return True
        if kind == "seg":
            _, seg_id, size = message
            self.peer.add(seg_id, size, self.channel.take_fd())
            return True
        if kind == "free":
            self.arena.free(message[1])
            return True
        return False

    def close(self) -> None:
        """The peer is gone: waiting calls fail, the channel and arena handles close."""
        with self._calls_lock:
            self.closed = True
            calls, self._calls = self._calls, {}
        for fut in calls.values():
            fut.set_exception(ChannelClosed("the peer is gone"))
        self.channel.close()
        self.arena.close()
