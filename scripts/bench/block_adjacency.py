"""How adjacent the executor keeps each sequence's KV blocks, and what decode steps cost,
over repeated waves of the same load on one executor (the pool churns as it would in a
long-running server): ROUNDS rounds of 96 requests (prompts of 128-150 tokens, 64 new
tokens, 32 at a time, block reuse on as in the demo repository). Per round: the share of
adjacent pairs (next block id = previous + 1) in the block tables of decode-only steps
of 24 or more sequences, and those steps' mean forward time.

    .venv/bin/python scripts/bench/block_adjacency.py [MODEL] [--rounds 5]
        [--tokens-per-block 32]

LLMSERVE_ENGINE_THREADS sets the engine's threads (default 1 here).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="models/demo-llm")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens-per-block", type=int, default=32)
    args = parser.parse_args()
    os.environ.setdefault("LLMSERVE_ENGINE_THREADS", "1")
    from bench.llmserve_runner import run_workload
    from bench.workload import make_requests
    from llmserve.llm import Executor, ExecutorConfig, KvCacheConfig, ModelType
    from llmserve.llm.engine.runner import ModelRunner

    bs = args.tokens_per_block
    seen = {"pairs": 0, "adjacent": 0, "steps": 0, "seconds": 0.0}
    forward = ModelRunner.forward

    def measured(runner, chunks):
        if len(chunks) < 24 or any(len(c.token_ids) != 1 for c in chunks):
            return forward(runner, chunks)
        for c in chunks:
            table = c.block_table[: (c.start_pos + bs) // bs]
            seen["pairs"] += len(table) - 1
            seen["adjacent"] += sum(b == a + 1 for a, b in zip(table, table[1:], strict=False))
        start = time.perf_counter()
        try:
            return forward(runner, chunks)
        finally:
            seen["seconds"] += time.perf_counter() - start
            seen["steps"] += 1

    ModelRunner.forward = measured
    executor = Executor(args.model, ModelType.DECODER_ONLY, ExecutorConfig(
        max_batch_size=32, max_num_tokens=256, enable_chunked_context=True,
        kv_cache_config=KvCacheConfig(max_tokens=1024 * 32, free_gpu_memory_fraction=None,
                                      enable_block_reuse=True),
        tokens_per_block=bs, device="cpu", dtype="float32", iter_stats_max_iterations=0))
    try:
        for round_ in range(1, args.rounds + 1):
            requests = make_requests(96, executor.vocab_size, 4096, seed=round_,
                                     prompt_range=(128, 150), output_range=(64, 64))
            seen.update(pairs=0, adjacent=0, steps=0, seconds=0.0)
            start = time.perf_counter()
            asyncio.run(run_workload(executor, requests, True, 32))
            wall = time.perf_counter() - start
            print(f"round {round_}: adjacent block pairs {seen['adjacent'] / max(1, seen['pairs']):.2f}, "
                  f"{seen['steps']} decode-only steps of {seen['seconds'] / max(1, seen['steps']) * 1e3:.2f} ms, "
                  f"{96 * 64 / wall:.0f} output tok/s")
    finally:
        executor.shutdown()


if __name__ == "__main__":
    main()
