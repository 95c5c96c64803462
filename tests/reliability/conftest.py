"""Reliability suite fixtures: one LLM server for the session (see reliability_server)."""

from __future__ import annotations

import pytest
from reliability_server import LLMServer


@pytest.fixture(scope="session")
def llm(tmp_path_factory):
    server = LLMServer(tmp_path_factory.mktemp("reliability"))
    yield server
    server.stop()
