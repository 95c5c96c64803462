"""The channel between the server and a Python model's stub process: one Unix stream
socket carrying framed messages, each a pickle (protocol 5, plain data only) whose
tensors travel as out-of-band buffers that the receiver maps without a copy, plus, with a
message, file descriptors (new shared-memory segments).

Imports only the standard library: the stub may run in a model's own environment.
A send never blocks its caller for long: what the socket cannot take at once is queued
for a writer thread, so the server's event loop is never held by a slow stub.
"""

from __future__ import annotations

import array
import collections
import io
import pickle
import socket
import struct
import threading
from typing import Any

# payload length, number of out-of-band buffers, body length; the body holds the buffer
# lengths (u64 each), the pickle, then each buffer at a 16-byte aligned offset
_FRAME = struct.Struct("<IIQ")
_ALIGN = 16
_PAD = bytes(_ALIGN)
_MAX_FDS = 16
_READ_BUFFER = 1 << 16
_JOIN_MAX = 1 << 14  # frames up to this size are written as one joined buffer
_CLOEXEC = getattr(socket, "MSG_CMSG_CLOEXEC", 0)


class ChannelClosed(Exception):
    """The peer is gone (end of file or a broken socket)."""


class _PlainData(pickle.Unpickler):
    """Loads tuples, lists, dicts, str, bytes, numbers and out-of-band buffers; no class
    is ever looked up, so a message cannot make the receiver run code."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"stub channel: refusing {module}.{name}")


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) & ~(_ALIGN - 1)


def encode(message: Any) -> list[Any]:
    """The frame of one message as buffers for sendmsg: pickle.PickleBuffer objects in the
    message (tensors) are referenced, not copied, unless the frame is small enough that
    one joined write is cheaper than a gather."""
    buffers: list[pickle.PickleBuffer] = []
    payload = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
    if not buffers:
        return [_FRAME.pack(len(payload), 0, len(payload)) + payload]
    raws = [b.raw() for b in buffers]
    lengths = struct.pack(f"<{len(raws)}Q", *(r.nbytes for r in raws))
    chunks: list[Any] = [None, lengths, payload]
    offset = len(lengths) + len(payload)
    for raw in raws:
        pad = _aligned(offset) - offset
        if pad:
            chunks.append(_PAD[:pad])
        chunks.append(raw)
        offset += pad + raw.nbytes
    chunks[0] = _FRAME.pack(len(payload), len(raws), offset)
    if offset <= _JOIN_MAX:
        return [b"".join(chunks)]
    return chunks


class Channel:
    """Both ends use one: send() from any thread, recv() from one reader thread."""

    def __init__(self, sock: socket.socket):
        sock.setblocking(True)
        self.sock = sock
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._backlog: collections.deque[tuple[list[Any], tuple[int, ...]]] = collections.deque()
        self._busy = False  # the backlog (or the writer) holds data: new sends queue behind it
        self._writer: threading.Thread | None = None
        self.broken = False
        self._rbuf = bytearray(_READ_BUFFER)
        self._start = self._end = 0  # unread bytes of _rbuf
        self._fds: collections.deque[int] = collections.deque()

    # -- sending ----------------------------------------------------------------------------
    def send(self, message: Any, fds: tuple[int, ...] = ()) -> None:
        """Send one message, with fds attached to it; silently dropped once the peer is
        gone (the reader reports that)."""
        self._send_chunks(encode(message), fds)

    def send_many(self, messages: list[Any]) -> None:
        """Send several messages in one write, in order."""
        chunks: list[Any] = []
        for message in messages:
            chunks.extend(encode(message))
        self._send_chunks(chunks, ())

    def _send_chunks(self, chunks: list[Any], fds: tuple[int, ...]) -> None:
        with self._lock:
            if self.broken:
                return
            if not self._busy:
                try:
                    chunks = self._write(chunks, fds, socket.MSG_DONTWAIT)
                except OSError:
                    self.broken = True
                    return
                if not chunks:
                    return
                fds = ()  # they went with the first byte
            self._backlog.append((chunks, fds))
            self._busy = True
            if self._writer is None:
                self._writer = threading.Thread(target=self._drain, daemon=True,
                                                name="llmserve-stub-writer")
                self._writer.start()
            self._ready.notify()

    def _write(self, chunks: list[Any], fds: tuple[int, ...], flags: int) -> list[Any]:
        """Write what the socket takes; the chunks not yet written come back."""
        if len(chunks) == 1 and not fds:  # the common case: one small frame
            try:
                sent = self.sock.send(chunks[0], flags)
            except BlockingIOError:
                return chunks
            if sent == len(chunks[0]):
                return []
            chunks = [memoryview(chunks[0])[sent:]]
        chunks = [m for m in (memoryview(c).cast("B") for c in chunks) if m.nbytes]
        while chunks:
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
            try:
                sent = self.sock.sendmsg(chunks, anc, flags)
            except BlockingIOError:
                return chunks
            fds = ()
            while sent:
                first = chunks[0]
                if sent >= first.nbytes:
                    sent -= first.nbytes
                    chunks.pop(0)
                else:
                    chunks[0] = first[sent:]
                    sent = 0
        return chunks

    def _drain(self) -> None:
        while True:
            with self._lock:
                while not self._backlog:
                    self._busy = False
                    if self.broken:
                        return
                    self._ready.wait()
                chunks, fds = self._backlog.popleft()
            try:
                self._write(chunks, fds, 0)
            except OSError:
                with self._lock:
                    self.broken = True
                    self._backlog.clear()

    # -- receiving --------------------------------------------------------------------------
    def buffered(self) -> bool:
        """Whether a received message waits in this side's buffer (read it without polling)."""
        return self._end - self._start >= _FRAME.size

    def take_fd(self) -> int:
        """The next file descriptor that came over the channel (they arrive in the order of
        the messages that carry them, before those messages are returned)."""
        return self._fds.popleft()

    def recv(self) -> Any:
        """The next message. Small ones are cut from one buffered read (several messages
        per system call when they queue up); a large body is read into a buffer of its own.
        Each message gets its own copy of its body: its tensors' views outlive the read."""
        self._fill(_FRAME.size)
        payload_len, count, body_len = _FRAME.unpack_from(self._rbuf, self._start)
        self._start += _FRAME.size
        have = self._end - self._start
        if body_len <= have:
            body = bytearray(memoryview(self._rbuf)[self._start:self._start + body_len])
            self._start += body_len
        else:
            body = bytearray(body_len)
            view = memoryview(body)
            view[:have] = memoryview(self._rbuf)[self._start:self._end]
            self._start = self._end = 0
            self._read_into(view[have:])
        lengths = struct.unpack_from(f"<{count}Q", body, 0)
        view = memoryview(body)
        offset = 8 * count
        payload = view[offset:offset + payload_len]
        offset += payload_len
        buffers = []
        for length in lengths:
            offset = _aligned(offset)
            buffers.append(view[offset:offset + length])
            offset += length
        return _PlainData(io.BytesIO(payload), buffers=buffers).load()

    def _fill(self, need: int) -> None:
        """Make at least `need` bytes available in the read buffer."""
        if self._end - self._start >= need:
            return
        if self._start:
            rest = self._end - self._start
            self._rbuf[:rest] = self._rbuf[self._start:self._end]
            self._start, self._end = 0, rest
        view = memoryview(self._rbuf)
        while self._end < need:
            self._end += self._read_some(view[self._end:])

    def _read_into(self, view: memoryview) -> None:
        got = 0
        while got < view.nbytes:
            got += self._read_some(view[got:])

    def _read_some(self, view: memoryview) -> int:
        try:
            n, anc, _flags, _addr = self.sock.recvmsg_into(
                [view], socket.CMSG_SPACE(4 * _MAX_FDS), _CLOEXEC)
        except OSError as exc:
            raise ChannelClosed(str(exc)) from exc
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                self._fds.extend(array.array("i", data[:len(data) - len(data) % 4]))
        if n == 0:
            raise ChannelClosed("end of file")
        return n

    def close(self) -> None:
        with self._lock:
            self.broken = True
            self._backlog.clear()
            self._ready.notify_all()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
