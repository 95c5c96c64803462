"""Fixtures for the Python backend tests: a server over this folder's models plus the
shared example models (add_sub, repeat), in both execution modes."""

from pathlib import Path

import pytest
from inproc_server import EXAMPLES, build_repo, running_server

MODELS = Path(__file__).parent / "models"
SHARED = {
    "add_sub": EXAMPLES / "add_sub",
    "repeat": EXAMPLES / "repeat",
    # helper_b is helper_a with its own helper.py (models/helper_b/1/helper.py): both
    # import same-named modules, which must stay private to each model.
    "helper_b": MODELS / "helper_a",
}


@pytest.fixture(scope="module", params=["stub", "in_process"])
def backend_server(request, tmp_path_factory):
    """A started server over the assembled backends repository (module scoped), once with
    every Python model in stub processes (the default) and once in-process."""
    repo = build_repo(tmp_path_factory.mktemp("backends_repo"), MODELS, SHARED)
    config = {"python": {"execution-mode": request.param}}
    with running_server(repo, config) as server:
        yield server
