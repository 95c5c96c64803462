"""Helpers: run an InferenceServer over this folder's test models, in asyncio, no sockets."""

import asyncio
from pathlib import Path

import numpy as np
import pytest

from llmserve.core import datatypes
from llmserve.core.types import InferenceRequest, Tensor
from llmserve.options import ServerOptions
from llmserve.server import InferenceServer

MODELS = Path(__file__).parent / "models"


def make_request(model, inputs, **kw):
    tensors = {}
    for name, value in inputs.items():
        array = np.asarray(value)
        if array.dtype.kind in ("U", "S"):
            array = np.array([v.encode() if isinstance(v, str) else v for v in array.reshape(-1)],
                             dtype=np.object_).reshape(array.shape)
        tensors[name] = Tensor(name, datatypes.api_name_of_numpy(array.dtype), array)
    return InferenceRequest(model, tensors, **kw)


async def collect(server, request):
    return [r async for r in server.infer(request)]


@pytest.fixture(scope="module")
def sched_server():
    """A started server over tests/scheduling/models on a private loop (module scoped)."""
    loop = asyncio.new_event_loop()
    server = InferenceServer(ServerOptions(model_repositories=[MODELS], exit_on_error=False,
                                           strict_readiness=False, exit_timeout_secs=5))
    loop.run_until_complete(server.start())

    def run(coro):
        return loop.run_until_complete(coro)

    server.run = run
    yield server
    loop.run_until_complete(server.stop())
    loop.close()
