"""Streamed OpenAI load at a fixed concurrency, with the server's CPU seconds per token.

    python scripts/bench_stream_load.py URL --model ensemble [--chat] [--concurrency 32]
        [--requests 64] [--isl 128] [--osl 64] [--seed 0] [--pid SERVER_PID]

Each request streams ignore_eos completions of exactly --osl tokens (counted from the
server's usage). Prompts are drawn from --seed: give each run its own seed to keep prefix
caching out of the figures. With --pid it reads the server's process CPU time (/proc,
children included) before and after and prints CPU seconds per streamed token.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time

import openai


def _role(pid: int, root: int) -> str:
    """server, engine, or the Python model a stub serves (its instance number dropped)."""
    if pid == root:
        return "server"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().decode(errors="replace").split("\0")
    except OSError:
        return "other"
    if "llmserve.llm.engine_process.worker" in argv:
        return "engine"
    if "--name" in argv[:-1]:
        return argv[argv.index("--name") + 1].rsplit("_", 2)[0]  # tensorrt_llm_bls_0_3
    return "other"


def cpu_by_role(pid: int) -> dict[str, float]:
    """utime+stime (and reaped children's) of pid and every live process under it,
    whichever of its threads started them, by role (server, engine, stubs by model)."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stats[int(entry)] = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
    tree = {pid}
    grew = True
    while grew:
        grew = False
        for p, fields in stats.items():
            if p not in tree and int(fields[1]) in tree:  # fields[1]: the parent's pid
                tree.add(p)
                grew = True
    out: dict[str, float] = {}
    for p in tree:
        if p in stats:
            role = _role(p, pid)
            out[role] = out.get(role, 0.0) + sum(int(x) for x in stats[p][11:15]) / tick
    return out


def _cpu_s(pid: int) -> float:
    return sum(cpu_by_role(pid).values())


def _prompt(rng: random.Random, words: int) -> str:
    vocab = ["alpha", "river", "stone", "cloud", "green", "light", "north", "paper", "quiet"]
    return " ".join(rng.choice(vocab) for _ in range(words))


async def open_stream(client: openai.AsyncOpenAI, model: str, prompt: str, chat: bool,
                      max_tokens: int, extra: dict):
    """A streamed chat or completions request of one user prompt."""
    if chat:
        return await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}],
            max_tokens=max_tokens, stream=True, extra_body=extra)
    return await client.completions.create(
        model=model, prompt=prompt, max_tokens=max_tokens, stream=True, extra_body=extra)


async def _one(client: openai.AsyncOpenAI, args, prompt: str) -> int:
    extra = {"ignore_eos": True, "stream_options": {"include_usage": True}}
    stream = await open_stream(client, args.model, prompt, args.chat, args.osl, extra)
    tokens = 0
    async for chunk in stream:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return tokens


def arguments() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--model", default="ensemble")
    ap.add_argument("--chat", action="store_true")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--isl", type=int, default=128, help="prompt words (about one token each)")
    ap.add_argument("--osl", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0, help="prompts drawn from this seed")
    ap.add_argument("--pid", type=int)
    return ap


async def run(args: argparse.Namespace) -> dict[str, float]:
    """One measurement (8 warm-up requests first): tokens, wall, tok/s, server CPU."""
    client = openai.AsyncOpenAI(base_url=args.url + "/v1", api_key="x", timeout=600)
    rng = random.Random(args.seed)
    prompts = [_prompt(rng, args.isl) for _ in range(args.requests + 8)]
    await asyncio.gather(*(_one(client, args, p) for p in prompts[:8]))  # warm-up
    sem = asyncio.Semaphore(args.concurrency)

    async def bounded(p: str) -> int:
        async with sem:
            return await _one(client, args, p)

    cpu0 = cpu_by_role(args.pid) if args.pid else {}
    t0 = time.monotonic()
    counts = await asyncio.gather(*(bounded(p) for p in prompts[8:]))
    wall = time.monotonic() - t0
    cpu1 = cpu_by_role(args.pid) if args.pid else {}
    await client.close()
    total = sum(counts)
    roles = {r: 1000 * (cpu1[r] - cpu0.get(r, 0.0)) / max(total, 1) for r in cpu1}
    cpu = sum(cpu1.values()) - sum(cpu0.values()) if args.pid else float("nan")
    return {"requests": len(counts), "tokens": total, "wall": wall, "tok_s": total / wall,
            "cpu_s": cpu, "cpu_ms_token": 1000 * cpu / max(total, 1),
            "load": os.getloadavg()[0], "ms_token_by_role": roles}


async def main() -> None:
    args = arguments().parse_args()
    r = await run(args)
    print(f"{'chat' if args.chat else 'completions'} c{args.concurrency} model={args.model} "
          f"requests={r['requests']} tokens={r['tokens']} wall={r['wall']:.1f}s "
          f"out_tok/s={r['tok_s']:.0f} server_cpu={r['cpu_s']:.1f}s "
          f"cpu_ms/token={r['cpu_ms_token']:.2f} load={r['load']:.1f}")
    if r["ms_token_by_role"]:
        print("  ms/token by process: " + ", ".join(
            f"{k} {v:.2f}" for k, v in sorted(r["ms_token_by_role"].items())))


if __name__ == "__main__":
    asyncio.run(main())
