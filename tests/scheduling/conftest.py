"""Fixtures for the scheduling tests: a server over this folder's models (the batching
models keep only their config.pbtxt; their code is tests/model_zoo/batch_echo) plus the
shared example models (add_sub, repeat)."""

from pathlib import Path

import pytest
from inproc_server import EXAMPLES, ZOO, build_repo, running_server

MODELS = Path(__file__).parent / "models"
BATCHING = ("batcher", "preferred", "slow_delay", "slow_priority", "slow_queue", "slow_timeout")
SHARED = {"add_sub": EXAMPLES / "add_sub", "repeat": EXAMPLES / "repeat",
          **{name: ZOO / "batch_echo" for name in BATCHING}}


@pytest.fixture(scope="module")
def sched_server(tmp_path_factory):
    """A started server over the assembled scheduling repository (module scoped)."""
    repo = build_repo(tmp_path_factory.mktemp("sched_repo"), MODELS, SHARED)
    with running_server(repo) as server:
        yield server
