"""Fixtures for the scheduling tests."""

from sched_helpers import sched_server  # noqa: F401
