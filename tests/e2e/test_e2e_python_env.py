"""EXECUTION_ENV_PATH over real sockets: two models import two versions of one module,
each from its own environment (a venv folder, and a venv packed as .tar.gz under
$$TRITON_MODEL_DIRECTORY), and each sees its own; the server's interpreter has neither.
The venvs are made here (python -m venv, numpy linked in from the server's)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as th
from e2e_live import LiveServer, e2e_options

MODEL = Path(__file__).parent / "stub_models" / "env_version"


def make_venv(path: Path, version: str) -> Path:
    """A venv whose site-packages holds shared_lib (VERSION = version) and sees numpy."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    [site] = path.glob("lib/python*/site-packages")
    (site / "shared_lib").mkdir()
    (site / "shared_lib" / "__init__.py").write_text(f"VERSION = {version!r}\n")
    deps = path / "deps"  # numpy only, not the server's whole site-packages
    deps.mkdir()
    numpy_dir = Path(importlib.util.find_spec("numpy").origin).parent
    for name in ("numpy", "numpy.libs"):
        if (numpy_dir.parent / name).exists():
            (deps / name).symlink_to(numpy_dir.parent / name)
    (site / "deps.pth").write_text(f"{deps}\n")
    return path


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    assert importlib.util.find_spec("shared_lib") is None
    base = tmp_path_factory.mktemp("envs")
    repo = base / "repo"
    venv_a = make_venv(base / "venv_a", "1.0")
    shutil.copytree(MODEL, repo / "uses_v1")
    shutil.copytree(MODEL, repo / "uses_v2")
    with tarfile.open(repo / "uses_v2" / "env.tar.gz", "w:gz") as archive:
        archive.add(make_venv(base / "venv_b", "2.0"), arcname="venv_b")
    for model, env in (("uses_v1", str(venv_a)), ("uses_v2", "$$TRITON_MODEL_DIRECTORY/env.tar.gz")):
        config = repo / model / "config.pbtxt"
        config.write_text(config.read_text().replace("${env}", env))
    server = LiveServer(e2e_options(model_repositories=[repo]))
    yield server, venv_a
    server.stop()


def ask(client: th.InferenceServerClient, model: str) -> tuple[str, str]:
    tensor = th.InferInput("IN", [1], "INT32")
    tensor.set_data_from_numpy(np.array([0], np.int32))
    version, prefix = client.infer(model, [tensor]).as_numpy("OUT")
    return version.decode(), prefix.decode()


def test_each_model_sees_the_module_of_its_own_environment(live):
    server, venv_a = live
    client = th.InferenceServerClient(server.http_url)
    try:
        version, prefix = ask(client, "uses_v1")
        assert version == "1.0" and Path(prefix) == venv_a.resolve()
        version, prefix = ask(client, "uses_v2")
        assert version == "2.0" and Path(prefix).name == "venv_b"
        assert Path(prefix) != venv_a.resolve()  # the unpacked copy of the archive
    finally:
        client.close()
