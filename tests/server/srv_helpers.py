"""Helpers for the server lifecycle tests: copy the test repository, build requests."""

import shutil
from pathlib import Path

import numpy as np

from llmserve.core import datatypes
from llmserve.core.types import InferenceRequest, Tensor
from llmserve.options import ServerOptions
from llmserve.server import InferenceServer

MODELS = Path(__file__).parent / "models"


def copy_repo(tmp_path: Path, names=None) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    for d in MODELS.iterdir():
        if names is None or d.name in names:
            shutil.copytree(d, repo / d.name, ignore=shutil.ignore_patterns("__pycache__"))
    return repo


def server_for(repo: Path, **kw) -> InferenceServer:
    kw.setdefault("exit_timeout_secs", 5)
    return InferenceServer(ServerOptions(model_repositories=[repo], **kw))


def make_request(model, inputs, **kw):
    tensors = {}
    for name, value in inputs.items():
        array = np.asarray(value)
        tensors[name] = Tensor(name, datatypes.api_name_of_numpy(array.dtype), array)
    return InferenceRequest(model, tensors, **kw)


async def collect(server, request):
    return [r async for r in server.infer(request)]


async def slow(server, ms=0, version=""):
    req = make_request("slow", {"X": np.array([ms], np.int32)},
                       model_version=int(version) if version else -1)
    [resp] = await collect(server, req)
    assert resp.error is None, resp.error
    return int(resp.output("V").data[0])
