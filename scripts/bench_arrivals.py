"""Waves of simultaneous streamed OpenAI requests: time to first token and, with --pid,
the server's CPU per request.

    python scripts/bench_arrivals.py URL --model ensemble [--chat] [--concurrency 32]
        [--rounds 4] [--max-tokens 64] [--words 25] [--pid SERVER_PID]

Each round sends --concurrency requests at once, every one with a prompt of its own
(--words random words from README.md, never repeated, so no prefix cache hit) and
ignore_eos, and waits for all. Prints per round the TTFT p50 and max (first chunk with
text) and the slowest request's latency; with --pid, the CPU seconds per request of the
server and of each process under it (/proc, as scripts/bench_stream_load.py reads it).
--max-tokens 1 measures what a request costs before its tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_stream_load import cpu_by_role, open_stream  # noqa: E402

WORDS = (Path(__file__).resolve().parent.parent / "README.md").read_text().split()


async def _one(client: openai.AsyncOpenAI, args, prompt: str) -> tuple[float, float]:
    start = time.perf_counter()
    first = None
    stream = await open_stream(client, args.model, prompt, args.chat, args.max_tokens,
                               {"ignore_eos": True})
    async for chunk in stream:
        if first is None and chunk.choices:
            choice = chunk.choices[0]
            text = choice.delta.content if args.chat else choice.text
            if text:
                first = time.perf_counter() - start
    end = time.perf_counter() - start
    return (end if first is None else first), end


async def _main(args) -> None:
    rng = random.Random(time.time_ns())
    client = openai.AsyncOpenAI(base_url=args.url.rstrip("/") + "/v1", api_key="none",
                                max_retries=0, timeout=600)

    def prompt() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(args.words))

    before = cpu_by_role(args.pid) if args.pid else None
    for r in range(args.rounds):
        results = await asyncio.gather(*(_one(client, args, prompt())
                                         for _ in range(args.concurrency)))
        ttft = sorted(t for t, _ in results)
        print(f"round {r}: {args.concurrency} at once, TTFT p50 {ttft[len(ttft) // 2] * 1e3:.0f} "
              f"max {ttft[-1] * 1e3:.0f} ms, slowest {max(e for _, e in results) * 1e3:.0f} ms")
    if before is not None:
        after = cpu_by_role(args.pid)
        n = args.rounds * args.concurrency
        per = {k: (after[k] - before.get(k, 0.0)) / n * 1e3 for k in after}
        print("CPU ms per request: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(per.items())
                                                  if v > 0.005))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("url")
    p.add_argument("--model", required=True)
    p.add_argument("--chat", action="store_true")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--words", type=int, default=25)
    p.add_argument("--pid", type=int, default=0)
    asyncio.run(_main(p.parse_args()))


if __name__ == "__main__":
    main()
