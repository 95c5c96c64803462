"""In-process InferenceServer harness shared by tests/backends, tests/scheduling and
tests/server: model repositories assembled from shared test models (tests/model_zoo,
examples/python_models), a started server on a private event loop, request helpers."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np

from llmserve.core import datatypes
from llmserve.core.types import InferenceRequest, Tensor
from llmserve.options import ServerOptions
from llmserve.server import InferenceServer

ZOO = Path(__file__).parent / "model_zoo"
EXAMPLES = Path(__file__).parent.parent / "examples" / "python_models"
_IGNORE = shutil.ignore_patterns("__pycache__")


def build_repo(dest: Path, own: Path, shared: Mapping[str, Path] | None = None,
               names: Iterable[str] | None = None) -> Path:
    """Assemble a model repository in `dest` (created): first each shared model
    (model name -> source model folder, e.g. EXAMPLES / "repeat" or ZOO / "batch_echo"),
    then the test folder's own models from `own` copied on top, so a test's own
    config.pbtxt (or any own file) wins over the shared one. names: only these models."""
    wanted = None if names is None else set(names)
    dest.mkdir(parents=True, exist_ok=True)
    for name, source in (shared or {}).items():
        if wanted is None or name in wanted:
            shutil.copytree(source, dest / name, ignore=_IGNORE, dirs_exist_ok=True)
    for model_dir in own.iterdir():
        if model_dir.is_dir() and (wanted is None or model_dir.name in wanted):
            shutil.copytree(model_dir, dest / model_dir.name, ignore=_IGNORE, dirs_exist_ok=True)
    return dest


@contextlib.contextmanager
def running_server(repo: Path, backend_config: dict | None = None) -> Iterator[InferenceServer]:
    """A started server over `repo` on a private loop; `server.run(coro)` runs on it."""
    loop = asyncio.new_event_loop()
    server = InferenceServer(ServerOptions(model_repositories=[repo], exit_on_error=False,
                                           strict_readiness=False, exit_timeout_secs=5,
                                           backend_config=backend_config or {}))
    loop.run_until_complete(server.start())
    server.run = loop.run_until_complete
    try:
        yield server
    finally:
        loop.run_until_complete(server.stop())
        loop.close()


def make_request(model: str, inputs: Mapping[str, object], **kw) -> InferenceRequest:
    """An InferenceRequest from numpy-convertible values; str/bytes become BYTES tensors."""
    tensors = {}
    for name, value in inputs.items():
        array = np.asarray(value)
        if array.dtype.kind in ("U", "S"):
            array = np.array([v.encode() if isinstance(v, str) else v for v in array.reshape(-1)],
                             dtype=np.object_).reshape(array.shape)
        tensors[name] = Tensor(name, datatypes.api_name_of_numpy(array.dtype), array)
    return InferenceRequest(model, tensors, **kw)


async def collect(server: InferenceServer, request: InferenceRequest) -> list:
    return [r async for r in server.infer(request)]


def infer_one(server: InferenceServer, model: str, inputs: Mapping[str, object], **kw):
    """The single response of a non-decoupled model (server from running_server)."""
    [resp] = server.run(collect(server, make_request(model, inputs, **kw)))
    return resp


def settled_stats(server: InferenceServer, model: str, before: dict, inferences: int) -> dict:
    """Statistics once the worker thread has booked the executions (it does so right after
    the responses went out)."""
    deadline = time.monotonic() + 5
    while True:
        stats = server.statistics(model)["model_stats"][0]
        done = int(stats["inference_count"]) - int(before["inference_count"])
        if done >= inferences or time.monotonic() > deadline:
            return stats
        time.sleep(0.01)


def assert_load_failed(server: InferenceServer, name: str, reason: str) -> None:
    """`name` is listed UNAVAILABLE with `reason` in its index reason, and is not ready."""
    rows = [r for r in server.repository_index() if r["name"] == name]
    assert rows and rows[0]["state"] == "UNAVAILABLE", rows
    assert reason in rows[0]["reason"], rows[0]["reason"]
    assert not server.model_ready(name)
