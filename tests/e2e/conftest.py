"""e2e fixtures: a real InferenceServer over tests/e2e/models behind the real frontends,
on a background asyncio loop, with ports chosen at run time (see e2e_live.py)."""

from __future__ import annotations

import pytest
from e2e_live import LiveServer, e2e_options


@pytest.fixture(scope="module")
def live():
    server = LiveServer(e2e_options())
    yield server
    server.stop()
