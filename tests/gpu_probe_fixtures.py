"""GPU probe fixtures for the config and repository tests: no GPUs unless a test installs
fake ones (llmserve.config.devices._probe is replaced)."""

import pytest

from llmserve.config import devices


@pytest.fixture(autouse=True)
def no_gpus(monkeypatch):
    """Tests see a machine without GPUs unless they install their own probe."""
    monkeypatch.setattr(devices, "_probe", lambda: ())


@pytest.fixture
def fake_gpus(monkeypatch):
    """Install GPUs: fake_gpus({0: "8.0", 1: "7.5"})."""

    def install(ccs: dict[int, str]) -> None:
        monkeypatch.setattr(devices, "_probe", lambda: tuple(sorted(ccs.items())))

    return install
