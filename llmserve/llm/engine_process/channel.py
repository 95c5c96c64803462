"""A worker process of the server and the channel to it: two ZMQ PUSH/PULL sockets over
ipc:// in a private folder, and two pipes that tell each side when the other is gone.

The worker is a fresh interpreter (`python -m <module>`), never a fork of the threaded
server. The server reads `alive_fd`: it reaches end of file when the worker exits, however
it exits. The worker reads its lifeline fd: end of file when the server exits, even by
SIGKILL, and it then exits too (watch_parent).
"""

from __future__ import annotations

import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import zmq

from llmserve.child_command import child_env, module_command

logger = logging.getLogger(__name__)

TO_WORKER, FROM_WORKER = "to_worker", "from_worker"


def _endpoint(folder: Path, name: str) -> str:
    return f"ipc://{folder / name}"


def _sockets(ctx: zmq.Context, folder: Path, push_to: str, pull_from: str,
             server: bool) -> tuple[zmq.Socket, zmq.Socket]:
    push = ctx.socket(zmq.PUSH)
    pull = ctx.socket(zmq.PULL)
    for sock, name in ((push, push_to), (pull, pull_from)):
        sock.setsockopt(zmq.SNDHWM, 0)  # never block or drop: the peer drains at once
        sock.setsockopt(zmq.RCVHWM, 0)
        if server:
            sock.setsockopt(zmq.LINGER, 0)
            sock.bind(_endpoint(folder, name))
        else:
            sock.connect(_endpoint(folder, name))
    return push, pull


def server_sockets(ctx: zmq.Context, folder: Path) -> tuple[zmq.Socket, zmq.Socket]:
    """(push to the worker, pull from the worker), bound before the worker starts."""
    return _sockets(ctx, folder, TO_WORKER, FROM_WORKER, server=True)


def worker_sockets(ctx: zmq.Context, folder: Path) -> tuple[zmq.Socket, zmq.Socket]:
    """(push to the server, pull from the server), for the worker."""
    return _sockets(ctx, folder, FROM_WORKER, TO_WORKER, server=False)


# the engine process's exit code when its tensor-parallel ranks failed
RANKS_FAILED_EXIT = 3


def describe_exit(code: int | None) -> str:
    if code is None:
        return "exit code unknown"
    if code == RANKS_FAILED_EXIT:
        return f"exit code {code}: its tensor-parallel ranks failed, see the engine's log"
    if code < 0:
        try:
            return f"exit code {code}, {signal.Signals(-code).name}"
        except ValueError:
            pass
    return f"exit code {code}"


class WorkerProcess:
    """A started worker and the server's side of its channel: the private folder, the
    bound sockets (push: to the worker, pull: from it) and the lifelines."""

    def __init__(self, module: str, name: str, args: list[str] | None = None,
                 files: dict[str, bytes] | None = None, env: dict[str, str] | None = None):
        """files: written into the channel folder before the worker starts."""
        self.name = name
        self.folder = Path(tempfile.mkdtemp(prefix="llmserve-worker-"))  # mode 0700
        self.ctx = zmq.Context()
        self._lifeline_w = self.alive_fd = -1
        try:
            self.push, self.pull = server_sockets(self.ctx, self.folder)
            for file_name, data in (files or {}).items():
                (self.folder / file_name).write_bytes(data)
            self.proc = self._spawn(module, args or [], env or {})
        except BaseException:
            self.close()
            raise

    def _spawn(self, module: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        lifeline_r, self._lifeline_w = os.pipe()  # the worker sees EOF when we are gone
        self.alive_fd, alive_w = os.pipe()  # we see EOF when the worker is gone
        cmd = module_command(sys.executable, module, "--channel", str(self.folder),
                             "--lifeline", str(lifeline_r), "--alive", str(alive_w),
                             "--name", self.name, *args)
        try:
            return subprocess.Popen(cmd, pass_fds=(lifeline_r, alive_w),
                                    env=child_env(dict(os.environ, **env)))
        finally:
            self._close_fds(lifeline_r, alive_w)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit code (negative: killed by that signal), None if still running."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float) -> int | None:
        """Wait up to timeout for the worker to exit, then kill it."""
        code = self.wait(timeout)
        if code is None:
            logger.warning("worker process %d (%s) did not exit; killing it", self.pid, self.name)
            self.proc.kill()
            code = self.wait(10)
        return code

    def close(self) -> None:
        """Release the sockets, lifelines and channel folder (once the worker is gone;
        the push socket must no longer be in use)."""
        self.ctx.destroy(linger=0)
        self._close_fds(self._lifeline_w, self.alive_fd)
        self._lifeline_w = self.alive_fd = -1
        shutil.rmtree(self.folder, ignore_errors=True)

    @staticmethod
    def _close_fds(*fds: int) -> None:
        for fd in fds:
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass


def watch_parent(lifeline_fd: int, on_gone: Callable[[], None]) -> threading.Thread:
    """In the worker: call on_gone when the server exits (the lifeline reaches end of file,
    or, as a backstop for a lifeline some fork still holds, the parent pid changes)."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            ready, _, _ = select.select([lifeline_fd], [], [], 1.0)
            if (ready and not os.read(lifeline_fd, 1)) or os.getppid() != parent:
                on_gone()
                return

    thread = threading.Thread(target=watch, name="llmserve-lifeline", daemon=True)
    thread.start()
    return thread
