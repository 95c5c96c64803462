"""run_server: starts the frontends, stops on SIGTERM after draining, exit codes."""

import os
import signal
import threading

from srv_helpers import copy_repo

import llmserve.frontends
from llmserve.options import ServerOptions
from llmserve.server import run_server


class _FakeFrontends:
    def __init__(self, server):
        self.server = server
        self.stopped = False

    async def stop(self):
        self.stopped = True


def test_sigterm_stops_cleanly(tmp_path, monkeypatch):
    repo = copy_repo(tmp_path, ["slow"])
    started = []

    async def fake_start(server, options):
        started.append(_FakeFrontends(server))
        assert server.is_ready()
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
        return started[-1]

    monkeypatch.setattr(llmserve.frontends, "start_frontends", fake_start)
    code = run_server(ServerOptions(model_repositories=[repo], exit_timeout_secs=2))
    assert code == 0
    assert started and started[0].stopped and not started[0].server.is_live()


def test_failed_model_gives_nonzero_exit(tmp_path, monkeypatch):
    repo = copy_repo(tmp_path, ["slow"])
    (repo / "slow" / "1" / "model.py").write_text("raise RuntimeError('nope')\n")

    async def fake_start(server, options):
        raise AssertionError("frontends must not start")

    monkeypatch.setattr(llmserve.frontends, "start_frontends", fake_start)
    assert run_server(ServerOptions(model_repositories=[repo])) == 1
