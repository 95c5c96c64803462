"""Fixtures for the repository tests: the shared GPU probe fixtures."""

from gpu_probe_fixtures import fake_gpus, no_gpus  # noqa: F401
