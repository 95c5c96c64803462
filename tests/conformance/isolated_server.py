"""An `llmserve serve` process on the ports Triton's own client scripts hard-code (8000
HTTP, 8001 gRPC, 8002 metrics), inside a private network namespace when this machine
allows one, so those ports never clash with anything else; clients run in the same one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from conformance_paths import REPO

TRITON_PORTS = (8000, 8001, 8002)

# waits inside the namespace for /v2/health/ready; argv[1] is the deadline in seconds
_READY_PROBE = """
import sys, time, urllib.request
deadline = time.monotonic() + float(sys.argv[1])
while time.monotonic() < deadline:
    try:
        if urllib.request.urlopen("http://127.0.0.1:8000/v2/health/ready", timeout=2).status == 200:
            sys.exit(0)
    except OSError:
        pass
    time.sleep(0.2)
sys.exit(1)
"""


def _works(argv: list[str]) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _namespace_kind() -> str:
    """'root' (unshare --net), 'user' (an unprivileged user namespace) or 'host'."""
    if _works(["unshare", "--net", "--", "ip", "link", "set", "lo", "up"]):
        return "root"
    if _works(["unshare", "--user", "--map-root-user", "--net", "--", "ip", "link", "set", "lo", "up"]):
        return "user"
    return "host"


def _taken_ports() -> list[int]:
    taken = []
    for port in TRITON_PORTS:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                taken.append(port)
    return taken


class IsolatedServer:
    """Start with start(), run clients with run_client(), always stop()."""

    def __init__(self, model_repository: Path, log_path: Path):
        self.repository = model_repository
        self.log_path = log_path
        self.kind = _namespace_kind()
        self.proc: subprocess.Popen | None = None

    def _enter(self) -> list[str]:
        """The prefix that runs a command in the server's network namespace."""
        assert self.proc is not None
        pid = self.proc.pid
        if self.kind == "root":
            return ["nsenter", f"--net=/proc/{pid}/ns/net", "--"]
        if self.kind == "user":
            return ["nsenter", "--preserve-credentials", f"--user=/proc/{pid}/ns/user",
                    f"--net=/proc/{pid}/ns/net", "--"]
        return []

    def start(self, ready_timeout: float = 180.0) -> None:
        serve = [sys.executable, "-m", "llmserve.cli", "serve",
                 "--model-repository", str(self.repository)]
        if self.kind == "host":
            taken = _taken_ports()
            if taken:
                raise AssertionError(
                    f"no private network namespace here (unshare --net failed) and ports {taken} "
                    "on 127.0.0.1 are taken; Triton's example clients hard-code 8000/8001/8002, "
                    "so free them (or allow unshare) to run these tests")
            argv = serve + ["--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1",
                            "--metrics-address", "127.0.0.1"]
        else:
            # bring the namespace's loopback up, then become the server (same pid)
            lo_up = ["sh", "-c", 'ip link set lo up && exec "$0" "$@"']
            ns = ["unshare", "--net", "--"] if self.kind == "root" else \
                ["unshare", "--user", "--map-root-user", "--net", "--"]
            argv = ns + lo_up + serve
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         cwd=self.repository.parent, start_new_session=True)
        self._wait_unshared()
        waiter = subprocess.Popen(self._enter() + [sys.executable, "-c", _READY_PROBE, str(ready_timeout)])
        while waiter.poll() is None:
            if self.proc.poll() is not None:
                waiter.kill()
                waiter.wait()
                raise AssertionError(f"the server exited ({self.proc.returncode}) before it was "
                                     f"ready:\n{self.log_tail()}")
            time.sleep(0.2)
        if waiter.returncode != 0:
            raise AssertionError(f"the server was not ready within {ready_timeout:.0f}s:\n{self.log_tail()}")

    def _wait_unshared(self, timeout: float = 60.0) -> None:
        """nsenter must not look at the process before `unshare` made the namespace (it
        would enter ours and talk to whatever holds port 8000 here): wait until the
        process has moved past unshare into its own network namespace."""
        if self.kind == "host":
            return
        assert self.proc is not None
        own = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            try:
                argv0 = Path(f"/proc/{self.proc.pid}/cmdline").read_bytes().split(b"\0")[0]
                netns = os.readlink(f"/proc/{self.proc.pid}/ns/net")
            except OSError:
                argv0, netns = b"", own
            if argv0 and Path(os.fsdecode(argv0)).name != "unshare" and netns != own:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the server process never left `unshare` in {timeout:.0f}s")
            time.sleep(0.05)

    def run_client(self, script: Path, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """Run one of Triton's client scripts, unchanged, with this interpreter."""
        return subprocess.run(self._enter() + [sys.executable, str(script)], capture_output=True,
                              text=True, timeout=timeout, cwd=self.repository.parent)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # the server and anything it started share the session begun at Popen
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
