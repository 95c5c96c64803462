"""A local Ray (2 CPUs, no dashboard) with llmserve deployed on Ray Serve: 2 replicas of
the inflight_batcher_llm model set filled for a tiny checkpoint, HTTP on 127.0.0.1 at a
free port. Ray is a test dependency: these tests fail, never skip, without it."""

from __future__ import annotations

import shutil
import socket
import sys
import time
from pathlib import Path

import httpx
import pytest
from llm_fixtures import make_tiny_checkpoint

from llmserve.options import ServerOptions

ROOT = Path(__file__).resolve().parents[2]
APP = "llmserve"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayServed:
    def __init__(self, base: Path, replicas: int = 2):
        import ray
        from ray import serve

        sys.path.insert(0, str(ROOT / "scripts"))
        import fill_demo_repository as fill

        from llmserve.ray_serve import RayServeOptions, build_app

        # room for a 512-token shared prefix
        ckpt = make_tiny_checkpoint(base / "ckpt", max_position_embeddings=1024)
        repo = fill.fill_repository(base / "repo", ckpt, max_batch_size=8, instances=1,
                                    python_execution_mode="in_process")
        shutil.rmtree(repo / "tensorrt_llm_bls")  # not used here: each replica loads faster
        self.options = ServerOptions(model_repositories=[repo], exit_timeout_secs=5.0,
                                     model_load_thread_count=1)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
        self.port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": self.port})
        serve.run(build_app(self.options, RayServeOptions(replicas=replicas, num_cpus=1)),
                  name=APP, route_prefix="/")
        self.http_url = f"127.0.0.1:{self.port}"
        self.wait_ready()

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://{self.http_url}/v2/health/ready", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError("the Ray Serve application did not become ready")

    def running_replicas(self) -> int:
        from ray import serve

        status = serve.status().applications[APP].deployments["llmserve_replica"]
        return status.replica_states.get("RUNNING", 0)

    def stop(self) -> None:
        import ray
        from ray import serve

        try:
            serve.shutdown()
        finally:
            ray.shutdown()


@pytest.fixture(scope="package")
def served(tmp_path_factory):
    s = RayServed(tmp_path_factory.mktemp("ray_serve"))
    yield s
    s.stop()
