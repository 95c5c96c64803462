"""Helpers for the server lifecycle tests: assemble the test repository, query `slow`."""

from pathlib import Path

import numpy as np
from inproc_server import EXAMPLES, build_repo, collect, make_request

from llmserve.options import ServerOptions
from llmserve.server import InferenceServer

MODELS = Path(__file__).parent / "models"
SHARED = {"add_sub": EXAMPLES / "add_sub", "repeat": EXAMPLES / "repeat"}


def copy_repo(tmp_path: Path, names=None) -> Path:
    """<tmp_path>/repo with this folder's models and the shared ones (only `names`)."""
    return build_repo(tmp_path / "repo", MODELS, SHARED, names)


def server_for(repo: Path, **kw) -> InferenceServer:
    kw.setdefault("exit_timeout_secs", 5)
    return InferenceServer(ServerOptions(model_repositories=[repo], **kw))


async def slow(server, ms=0, version=""):
    req = make_request("slow", {"X": np.array([ms], np.int32)},
                       model_version=int(version) if version else -1)
    [resp] = await collect(server, req)
    assert resp.error is None, resp.error
    return int(resp.output("V").data[0])
