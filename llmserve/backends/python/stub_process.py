"""A Python model instance's stub process, from the server's side: started as a fresh
interpreter (never a fork of the threaded server) holding one end of a socket pair,
its hello awaited, its messages read on a thread of their own, its exit noticed at once
(a pidfd, or the socket's end of file) and reported, with the reason, to the handler.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from llmserve.backends.python.stub_channel import Channel, ChannelClosed
from llmserve.backends.python.stub_env import StubInterpreter
from llmserve.backends.python.stub_link import Link
from llmserve.backends.python.stub_settings import PythonBackendSettings
from llmserve.child_command import module_command
from llmserve.core.errors import Unavailable

log = logging.getLogger("llmserve.backends.python.stub")
_FLUSH_S = 0.05  # how soon blocks released by the server go back to the stub when idle
_EXIT_GRACE_S = 2.0  # a stub whose channel closed is killed if it has not exited by then


class StubHandler(Protocol):
    def on_message(self, message: tuple) -> None: ...

    def on_exit(self, reason: str) -> None: ...

    def hang_deadline(self) -> float | None: ...  # time.monotonic() past which it is hung

    def on_hang(self) -> None: ...


def describe_exit(code: int | None) -> str:
    if code is None:
        return "exit code unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class StubProcess:
    def __init__(self, name: str, interpreter: StubInterpreter, settings: PythonBackendSettings):
        self.name = name
        self.settings = settings
        self.kill_reason: str | None = None
        self.stopping = False  # stop() closed the channel: the exit that follows is expected
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        cmd = module_command(interpreter.python, "llmserve.backends.python.stub_main",
                             "--fd", str(theirs.fileno()), "--name", name,
                             root=interpreter.import_root)
        try:
            # a session of its own: a Ctrl-C meant for the server does not reach the stub
            self.proc = subprocess.Popen(cmd, pass_fds=(theirs.fileno(),), env=interpreter.env,
                                         start_new_session=True)
        except OSError as exc:
            ours.close()
            raise Unavailable(f"cannot start the stub process of model instance '{name}' with "
                              f"{interpreter.python}: {exc}") from exc
        finally:
            theirs.close()
        self.pidfd = _pidfd(self.proc.pid)
        prefix = f"{settings.shm_region_prefix_name}{name}_{self.proc.pid}_"
        self.link = Link(Channel(ours), prefix, settings.shm_default_byte_size,
                         settings.shm_growth_byte_size)
        self._reader: threading.Thread | None = None
        try:
            self.hello = self._await_hello(interpreter)
        except BaseException:
            self._discard()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    # -- start-up -------------------------------------------------------------------------
    def _await_hello(self, interpreter: StubInterpreter) -> tuple:
        timeout = self.settings.stub_timeout_seconds
        if not self._readable(timeout):
            if self.proc.poll() is None:
                raise Unavailable(f"stub process of model instance '{self.name}' did not start "
                                  f"within {timeout:.0f} s (stub-timeout-seconds)")
        try:
            message = self.link.channel.recv()
        except ChannelClosed:
            code = self.proc.wait(5)
            raise Unavailable(f"stub process of model instance '{self.name}' exited at start "
                              f"({describe_exit(code)}) using {interpreter.python}") from None
        if message[0] == "fatal":
            raise Unavailable(f"stub process of model instance '{self.name}': {message[1]}")
        return message

    def _readable(self, timeout: float) -> bool:
        """Wait until the socket has data or the process exited (True), or timeout."""
        poller = select.poll()
        poller.register(self.link.channel.sock, select.POLLIN)
        if self.pidfd is not None:
            poller.register(self.pidfd, select.POLLIN)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            # without a pidfd, look at the process every 0.2 s
            wait = left if self.pidfd is not None else min(left, 0.2)
            if poller.poll(wait * 1000) or self.proc.poll() is not None:
                return True

    def start(self, init: dict[str, Any], handler: StubHandler) -> None:
        """Send the init message and start reading the stub's messages."""
        self.link.send(("init", init))
        self._reader = threading.Thread(target=self._read, args=(handler,), daemon=True,
                                        name=f"stub-{self.name}")
        self._reader.start()

    # -- reading ---------------------------------------------------------------------------
    def _read(self, handler: StubHandler) -> None:
        sock = self.link.channel.sock
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        if self.pidfd is not None:
            poller.register(self.pidfd, select.POLLIN)
        sock_fd = sock.fileno()
        channel = self.link.channel
        while True:
            if not channel.buffered():
                events = poller.poll(self._poll_timeout(handler) * 1000)
                if not events:
                    self.link.flush_notes()
                    deadline = handler.hang_deadline()
                    if deadline is not None and time.monotonic() >= deadline:
                        handler.on_hang()
                    continue
                if not any(fd == sock_fd for fd, _ in events):
                    if self.proc.poll() is not None:
                        break  # exited with nothing left to read
                    continue
            try:
                message = channel.recv()
            except ChannelClosed:
                break
            try:
                handler.on_message(message)
            except Exception:
                log.exception("model instance '%s': handling the stub's %r message failed",
                              self.name, message[0])
        if not self.stopping:
            try:  # end of file usually means the stub is exiting: give it a moment
                self.proc.wait(_EXIT_GRACE_S)
            except subprocess.TimeoutExpired:
                self.kill("its channel to the server closed")  # under a living process
        code = self.proc.wait()
        handler.on_exit(self.kill_reason or describe_exit(code))

    def _poll_timeout(self, handler: StubHandler) -> float:
        # a batch sent while the reader waits is seen at the next wake-up: at most 1 s late
        timeout = 1.0
        deadline = handler.hang_deadline()
        if deadline is not None:
            timeout = min(timeout, max(0.0, deadline - time.monotonic()) + 0.01)
        if self.link.peer.released:
            timeout = min(timeout, _FLUSH_S)
        if self.pidfd is None:
            timeout = min(timeout, 0.2)
        return timeout

    # -- ending ----------------------------------------------------------------------------
    def kill(self, reason: str) -> None:
        if self.kill_reason is None:
            self.kill_reason = reason
        try:
            self.proc.kill()
        except OSError:
            pass

    def stop(self, timeout: float) -> None:
        """After finalize: close the channel (the stub exits at end of file), wait for the
        process, kill it when it does not exit."""
        self.stopping = True
        self.link.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("stub process %d of model instance '%s' did not exit; killing it",
                        self.pid, self.name)
            self.kill("did not exit after finalize")
            self.proc.wait()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout=5)
        self._close_pidfd()

    def _discard(self) -> None:
        self.kill("start-up failed")
        self.proc.wait()
        self.link.close()
        self._close_pidfd()

    def _close_pidfd(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def _pidfd(pid: int) -> int | None:
    opener: Callable[[int], int] | None = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        return opener(pid)
    except OSError:
        return None
