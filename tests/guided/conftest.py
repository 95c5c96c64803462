"""Guided decoding fixtures: the live server (guided_cases.GuidedServer) and openai
clients on it."""

from __future__ import annotations

import pytest
from guided_cases import GuidedServer


@pytest.fixture(scope="session")
def guided(tmp_path_factory):
    server = GuidedServer(tmp_path_factory.mktemp("guided"))
    yield server
    server.live.stop()


@pytest.fixture(scope="session")
def client(guided):
    import openai

    return openai.OpenAI(base_url=guided.base_url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture
def aclient(guided):
    """openai.AsyncOpenAI factory: make one inside each event loop (asyncio.run)."""
    import openai

    return lambda: openai.AsyncOpenAI(base_url=guided.base_url, api_key="unused",
                                      max_retries=0, timeout=120)
