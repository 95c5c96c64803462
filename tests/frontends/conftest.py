"""Fixtures for frontend tests: the real frontends over an in-test InferenceServer double."""

from __future__ import annotations

import pytest
from frontends_double import Running


@pytest.fixture(scope="module")
def running():
    r = Running()
    yield r
    r.stop()
