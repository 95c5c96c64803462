"""Streamed OpenAI load at a fixed concurrency, with the server's CPU seconds per token.

    python scripts/bench_stream_load.py URL --model ensemble [--chat] [--concurrency 32]
        [--requests 64] [--isl 128] [--osl 64] [--pid SERVER_PID]

Each request streams ignore_eos completions of exactly --osl tokens (counted from the
server's usage); with --pid it reads the server's process CPU time (/proc, children
included) before and after and prints CPU seconds per streamed token.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time

import openai


def _cpu_s(pid: int) -> float:
    """utime+stime of pid and its reaped children, plus its live children."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    pids = [pid]
    for p in pids:
        try:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15])
            with open(f"/proc/{p}/task/{p}/children") as f:
                pids.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return total / tick


def _prompt(rng: random.Random, words: int) -> str:
    vocab = ["alpha", "river", "stone", "cloud", "green", "light", "north", "paper", "quiet"]
    return " ".join(rng.choice(vocab) for _ in range(words))


async def _one(client: openai.AsyncOpenAI, args, prompt: str) -> int:
    extra = {"ignore_eos": True, "stream_options": {"include_usage": True}}
    if args.chat:
        stream = await client.chat.completions.create(
            model=args.model, messages=[{"role": "user", "content": prompt}],
            max_tokens=args.osl, stream=True, extra_body=extra)
    else:
        stream = await client.completions.create(
            model=args.model, prompt=prompt, max_tokens=args.osl, stream=True, extra_body=extra)
    tokens = 0
    async for chunk in stream:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return tokens


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--model", default="ensemble")
    ap.add_argument("--chat", action="store_true")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--isl", type=int, default=128, help="prompt words (about one token each)")
    ap.add_argument("--osl", type=int, default=64)
    ap.add_argument("--pid", type=int)
    args = ap.parse_args()
    client = openai.AsyncOpenAI(base_url=args.url + "/v1", api_key="x", timeout=600)
    rng = random.Random(0)
    prompts = [_prompt(rng, args.isl) for _ in range(args.requests + 8)]
    await asyncio.gather(*(_one(client, args, p) for p in prompts[:8]))  # warm-up
    sem = asyncio.Semaphore(args.concurrency)

    async def bounded(p: str) -> int:
        async with sem:
            return await _one(client, args, p)

    cpu0 = _cpu_s(args.pid) if args.pid else 0.0
    t0 = time.monotonic()
    counts = await asyncio.gather(*(bounded(p) for p in prompts[8:]))
    wall = time.monotonic() - t0
    cpu = (_cpu_s(args.pid) - cpu0) if args.pid else float("nan")
    total = sum(counts)
    print(f"{'chat' if args.chat else 'completions'} c{args.concurrency} model={args.model} "
          f"requests={len(counts)} tokens={total} wall={wall:.1f}s out_tok/s={total / wall:.0f} "
          f"server_cpu={cpu:.1f}s cpu_ms/token={1000 * cpu / max(total, 1):.2f} "
          f"load={os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    asyncio.run(main())
