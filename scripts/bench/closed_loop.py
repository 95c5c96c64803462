"""The executor alone under a closed loop: CONCURRENCY requests in flight, each new one
sent as one ends, random prompts of PROMPT tokens (no prefix is ever shared) and OUT
output tokens; prints output tok/s and this process's CPU ms per output token. The
ceiling an engine thread sets for the server's streamed rows at that concurrency.

    .venv/bin/python scripts/bench/closed_loop.py [MODEL] [--concurrency 32]
        [--prompt 128] [--out 64] [--requests 128] [--max-num-tokens 256]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("LLMSERVE_ENGINE_THREADS", "1")

from bench import llmserve_runner  # noqa: E402
from bench.workload import make_requests  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default="models/demo-llm")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--out", type=int, default=64)
    ap.add_argument("--requests", type=int, default=128)
    ap.add_argument("--max-num-tokens", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    ex = llmserve_runner.make_executor(args.model, llmserve_runner.LlmserveSettings(
        max_num_tokens=args.max_num_tokens, max_batch_size=args.concurrency))
    vocab = ex.vocab_size
    warm = make_requests(4, vocab, 4096, seed=99, prompt_range=(16, 16), output_range=(8, 8))
    requests = make_requests(args.requests, vocab, 4096, seed=args.seed,
                             prompt_range=(args.prompt, args.prompt),
                             output_range=(args.out, args.out))
    try:
        asyncio.run(llmserve_runner.run_workload(ex, warm, True, args.concurrency))
        cpu0, t0 = time.process_time(), time.perf_counter()
        asyncio.run(llmserve_runner.run_workload(ex, requests, True, args.concurrency))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        ex.shutdown()
    tokens = args.requests * args.out
    print(f"c{args.concurrency} prompt {args.prompt} out {args.out}: "
          f"{tokens / wall:.0f} out tok/s, {1000 * cpu / tokens:.2f} CPU ms/token")


if __name__ == "__main__":
    main()
