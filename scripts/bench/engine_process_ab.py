"""Streamed output rate through the ensemble with the executor in the server process
(A) and in an engine process (B), alternating A/B so that other load on a shared
machine falls on both alike.

Per round and mode: starts `llmserve serve` on the demo model set (LLMSERVE_ENGINE_PROCESS
off / on), runs WARMUP then REQUESTS streaming OpenAI completions (model `ensemble`,
ignore_eos, max_tokens OSL) at CONCURRENCY from this process, and prints output tokens/s,
mean time to first token and mean inter-token latency, then stops the server.

    .venv/bin/python scripts/bench/engine_process_ab.py [--rounds 3] [--concurrency 1 32]
        [--requests 64] [--osl 64] [--model models/demo-llm]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
PORT = 18400


def fill_repository(model: Path, out: Path, max_batch_size: int = 64, root: Path = ROOT) -> Path:
    """The demo model set, filled by the fill script of the tree at root."""
    subprocess.run([sys.executable, str(root / "scripts" / "fill_demo_repository.py"),
                    str(out), "--model", str(model), "--no-draft", "--force",
                    "--max-batch-size", str(max_batch_size)], check=True,
                   stdout=subprocess.DEVNULL)
    return out


def start_server(repo: Path, engine_process: bool, log: Path,
                 extra_args: tuple[str, ...] = (), root: Path = ROOT) -> subprocess.Popen:
    """`llmserve serve` of the tree at root on repo, once it answers ready."""
    env = dict(os.environ, LLMSERVE_ENGINE_PROCESS=str(engine_process).lower(),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-c", "import sys; from llmserve.cli import main; sys.exit(main())",
           "serve", "--model-repository", str(repo), "--http-port", str(PORT),
           "--grpc-port", str(PORT + 1), "--metrics-port", str(PORT + 2), *extra_args]
    server = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{PORT}/v2/health/ready", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if server.poll() is not None:
            break
        time.sleep(1)
    server.kill()
    raise RuntimeError(f"the server did not come up; see {log}")


async def one(client: httpx.AsyncClient, prompt: str, osl: int,
              model: str = "ensemble") -> tuple[int, float, list]:
    body = {"model": model, "prompt": prompt, "max_tokens": osl, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    stamps, tokens = [], 0
    async with client.stream("POST", "/v1/completions", json=body) as r:
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            doc = json.loads(line[6:])
            if doc.get("usage"):
                tokens = doc["usage"]["completion_tokens"]
            if doc.get("choices") and doc["choices"][0].get("text"):
                stamps.append(time.perf_counter())
    return tokens, stamps[0] - start if stamps else float("nan"), stamps


async def load(concurrency: int, requests: int, osl: int,
               model: str = "ensemble") -> dict[str, float]:
    prompts = [f"Once upon a time, story number {i} began with" for i in range(requests)]
    queue: asyncio.Queue = asyncio.Queue()
    for p in prompts:
        queue.put_nowait(p)
    results = []

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            results.append(await one(client, queue.get_nowait(), osl, model))

    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{PORT}", timeout=600,
                                 limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    tokens = sum(r[0] for r in results)
    gaps = [(b - a) for _, _, s in results for a, b in zip(s[:-1], s[1:], strict=True)]
    return {"tok_s": tokens / wall, "ttft_ms": statistics.mean(r[1] for r in results) * 1e3,
            "itl_ms": statistics.mean(gaps) * 1e3 if gaps else float("nan")}


def load_arguments(concurrency: list[int], requests: int, out: str) -> argparse.ArgumentParser:
    """The A/B scripts' common options: rounds, load shape, checkpoint, output folder."""
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, nargs="+", default=concurrency)
    p.add_argument("--requests", type=int, default=requests)
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--osl", type=int, default=64)
    p.add_argument("--model", type=Path, default=ROOT / "models" / "demo-llm")
    p.add_argument("--out", type=Path, default=ROOT / "build" / out)
    return p


def main() -> None:
    args = load_arguments([1, 32], 64, "bench_engine_process").parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    repo = fill_repository(args.model.resolve(), args.out / "repo")
    rows: dict[tuple[str, int], list[dict]] = {}
    for rnd in range(args.rounds):
        for mode in ("in-process", "engine-process"):
            server = start_server(repo, mode == "engine-process", args.out / f"{mode}.log")
            try:
                asyncio.run(load(min(args.warmup, 8), args.warmup, args.osl))
                for conc in args.concurrency:
                    r = asyncio.run(load(conc, max(args.requests, conc), args.osl))
                    rows.setdefault((mode, conc), []).append(r)
                    print(f"round {rnd} {mode:>14} c={conc:<3} {r['tok_s']:7.1f} tok/s  "
                          f"ttft {r['ttft_ms']:7.1f} ms  itl {r['itl_ms']:6.2f} ms", flush=True)
            finally:
                server.terminate()
                server.wait(60)
    print_medians([(f"{mode:>14} c={conc:<3}", rs) for (mode, conc), rs
                   in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0]))])


def print_medians(rows: list[tuple[str, list[dict]]]) -> None:
    """One line per (label, each round's result): the medians, and each round's tok/s."""
    print("\nmedian over rounds")
    for label, rs in rows:
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        print(f"{label} {med['tok_s']:7.1f} tok/s  ttft {med['ttft_ms']:7.1f} ms"
              f"  itl {med['itl_ms']:6.2f} ms  (tok/s per round: "
              f"{', '.join(str(round(r['tok_s'])) for r in rs)})")


if __name__ == "__main__":
    main()
