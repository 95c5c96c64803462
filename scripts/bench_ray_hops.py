"""The cost of each hop of `llmserve serve --ray` against the same repository served by
one llmserve process: readiness (no model work), a one-token generate, and a streamed
completion (first chunk and gap between chunks), sequential requests, medians in ms.

    python scripts/bench_ray_hops.py [--model-dir models/demo-llm] [--requests 50]
        [--skip-direct] [--skip-ray]

Both servers are started by this script with the same filled inflight_batcher_llm
repository (`llmserve serve`, then `llmserve serve --ray --replicas 1`), on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import fill_demo_repository as fill  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(repo: Path, port: int, ray: bool) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "llmserve.cli", "serve", "--model-repository", str(repo),
           "--http-address", "127.0.0.1", "--http-port", str(port),
           "--allow-grpc", "false", "--allow-metrics", "false", "--log-info", "false"]
    if ray:
        cmd += ["--ray", "--replicas", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=5).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError("server not ready")


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def _median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 2)


def measure(url: str, n: int) -> dict[str, float]:
    client = httpx.Client(base_url=url, timeout=120)
    ready, gen, first, gaps, whole = [], [], [], [], []
    for i in range(3):  # warm-up: connections, tokenizers, first-call caches
        client.post("/v2/models/ensemble/generate", json={"text_input": f"warm {i}", "max_tokens": 1})
    for i in range(n):
        t = time.perf_counter()
        assert client.get("/v2/health/ready").status_code == 200
        ready.append(time.perf_counter() - t)
        t = time.perf_counter()
        r = client.post("/v2/models/ensemble/generate",
                        json={"text_input": f"The server {i} answers", "max_tokens": 1})
        assert r.status_code == 200, r.text
        gen.append(time.perf_counter() - t)
        body = {"model": "ensemble", "prompt": f"Once upon a time {i}", "max_tokens": 16,
                "min_tokens": 16, "stream": True}
        t = time.perf_counter()
        stamps = []
        with client.stream("POST", "/v1/completions", json=body) as s:
            for line in s.iter_lines():
                if line.startswith("data: {"):
                    stamps.append(time.perf_counter())
        first.append(stamps[0] - t)
        whole.append(stamps[-1] - t)
        gaps.extend(b - a for a, b in zip(stamps, stamps[1:], strict=False))
    return {"ready_ms": _median_ms(ready), "generate_1_token_ms": _median_ms(gen),
            "stream_first_chunk_ms": _median_ms(first), "stream_last_chunk_ms": _median_ms(whole),
            "stream_chunk_gap_ms": _median_ms(gaps)}


def proxy_hop(n: int) -> dict[str, float]:
    """Ray Serve's proxy and one deployment call alone: a deployment that answers
    every request at once (the first of the two hops of `--ray`)."""
    import ray
    from ray import serve
    from starlette.responses import Response

    @serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
    class Echo:
        async def __call__(self, request) -> Response:  # noqa: ANN001
            return Response(b"ok")

    ray.init(include_dashboard=False, log_to_driver=False)
    port = _free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(Echo.bind(), name="echo", route_prefix="/")
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        for _ in range(3):
            client.get("/")
        samples = []
        for _ in range(n):
            t = time.perf_counter()
            assert client.get("/").content == b"ok"
            samples.append(time.perf_counter() - t)
        return {"echo_ms": _median_ms(samples)}
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", type=Path, default=ROOT / "models" / "demo-llm")
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--skip-direct", action="store_true")
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--skip-echo", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = fill.fill_repository(Path(tmp) / "repo", args.model_dir, max_batch_size=8)
        results = {}
        for name, ray in (("direct", False), ("ray_serve", True)):
            if (ray and args.skip_ray) or (not ray and args.skip_direct):
                continue
            port = _free_port()
            proc = _start(repo, port, ray)
            try:
                results[name] = measure(f"http://127.0.0.1:{port}", args.requests)
            finally:
                _stop(proc)
            print(name, json.dumps(results[name]), flush=True)
    if not args.skip_echo:
        results["ray_serve_proxy_only"] = proxy_hop(args.requests)
        print("ray_serve_proxy_only", json.dumps(results["ray_serve_proxy_only"]), flush=True)
    if "direct" in results and "ray_serve" in results:
        added = {k: round(results["ray_serve"][k] - results["direct"][k], 2)
                 for k in results["direct"]}
        print("added by Ray Serve (proxy + ingress + router + replica call)", json.dumps(added))
    return 0


if __name__ == "__main__":
    sys.exit(main())
