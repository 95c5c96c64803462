"""The cost of each hop of `llmserve serve --ray` against the same repository served by
one llmserve process: readiness (no model work), a one-token generate, and a streamed
completion (first chunk and gap between chunks), sequential requests, medians in ms.

    python scripts/bench_ray_hops.py [--model-dir models/demo-llm] [--requests 50]

Both servers run at once, started by this script with the same filled
inflight_batcher_llm repository (`llmserve serve` and `llmserve serve --ray --replicas
1`, on 127.0.0.1), and take their requests in turn so that the machine's other load falls
on both alike; an /echo deployment on the same Ray Serve proxy measures the proxy hop.
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


def one_round(client: httpx.Client, i: int, out: dict[str, list[float]]) -> None:
    """One request of each kind, appended to out's lists (seconds)."""
    t = time.perf_counter()
    assert client.get("/v2/health/ready").status_code == 200
    out["ready_ms"].append(time.perf_counter() - t)
    t = time.perf_counter()
    r = client.post("/v2/models/ensemble/generate",
                    json={"text_input": f"The server {i} answers", "max_tokens": 1})
    assert r.status_code == 200, r.text
    out["generate_1_token_ms"].append(time.perf_counter() - t)
    body = {"model": "ensemble", "prompt": f"Once upon a time {i}", "max_tokens": 16,
            "min_tokens": 16, "stream": True}
    t = time.perf_counter()
    stamps = []
    with client.stream("POST", "/v1/completions", json=body) as s:
        for line in s.iter_lines():
            if line.startswith("data: {"):
                stamps.append(time.perf_counter())
    out["stream_first_chunk_ms"].append(stamps[0] - t)
    out["stream_last_chunk_ms"].append(stamps[-1] - t)
    out["stream_chunk_gap_ms"].extend(b - a for a, b in zip(stamps, stamps[1:], strict=False))


def deploy_echo() -> None:
    """Ray Serve's proxy and one deployment call alone, on the --ray server's cluster and
    proxy: a deployment at /echo that answers at once (the first hop of `--ray`)."""
    import ray
    from ray import serve
    from starlette.responses import Response

    @serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
    class Echo:
        async def __call__(self, request) -> Response:  # noqa: ANN001
            return Response(b"ok")

    ray.init(address="auto", log_to_driver=False)
    serve.run(Echo.bind(), name="echo", route_prefix="/echo")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", type=Path, default=ROOT / "models" / "demo-llm")
    ap.add_argument("--requests", type=int, default=50)
    args = ap.parse_args()
    kinds = ("ready_ms", "generate_1_token_ms", "stream_first_chunk_ms",
             "stream_last_chunk_ms", "stream_chunk_gap_ms")
    with tempfile.TemporaryDirectory() as tmp:
        repo = fill.fill_repository(Path(tmp) / "repo", args.model_dir, max_batch_size=8)
        procs: dict[str, subprocess.Popen] = {}
        clients: dict[str, httpx.Client] = {}
        try:
            for name, ray in (("direct", False), ("ray_serve", True)):
                port = _free_port()
                procs[name] = _start(repo, port, ray)
                clients[name] = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
            deploy_echo()
            samples = {name: {k: [] for k in kinds} for name in clients}
            echo: list[float] = []
            for i in range(3):  # warm-up: connections, tokenizers, first-call caches
                for client in clients.values():
                    one_round(client, i, {k: [] for k in kinds})
                clients["ray_serve"].get("/echo")
            # interleaved, so that the machine's other load falls on both alike
            for i in range(args.requests):
                order = list(clients) if i % 2 == 0 else list(clients)[::-1]
                for name in order:
                    one_round(clients[name], i, samples[name])
                t = time.perf_counter()
                assert clients["ray_serve"].get("/echo").content == b"ok"
                echo.append(time.perf_counter() - t)
        finally:
            import ray

            ray.shutdown()  # this driver leaves the --ray server's cluster first
            for proc in procs.values():
                _stop(proc)
    results = {name: {k: _median_ms(v) for k, v in got.items()} for name, got in samples.items()}
    for name, got in results.items():
        print(name, json.dumps(got))
    print("ray_serve_proxy_only", json.dumps({"echo_ms": _median_ms(echo)}))
    added = {k: round(results["ray_serve"][k] - results["direct"][k], 2) for k in kinds}
    print("added by Ray Serve (proxy + ingress + router + replica call)", json.dumps(added))
    return 0


if __name__ == "__main__":
    sys.exit(main())
