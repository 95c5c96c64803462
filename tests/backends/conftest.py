"""Fixtures for the Python backend tests."""

from pyb_helpers import backend_server  # noqa: F401
