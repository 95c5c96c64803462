"""Batch-1 decode tokens/s of the executor: one streamed request of 256 tokens after a
16-token prompt, repeated RUNS times in one process; prints the best and every run.
Used for A/B comparisons of engine changes (run the two trees alternately).

    .venv/bin/python scripts/bench/decode_rate.py MODEL [RUNS]
"""

from __future__ import annotations

import os
import sys

import torch


def main(model: str, runs: int) -> None:
    torch.set_num_threads(1)  # this thread does no torch work: the engine thread does
    os.environ.setdefault("LLMSERVE_ENGINE_THREADS", "2")
    from load_while_serving import stream  # this folder: one streaming loop for both

    from llmserve.llm import Executor, ExecutorConfig, KvCacheConfig

    executor = Executor(model, executor_config=ExecutorConfig(
        kv_cache_config=KvCacheConfig(max_tokens=4096)))

    try:
        stream(executor, 16)  # warm-up
        rates = []
        for _ in range(runs):
            stamps = stream(executor, 256)
            rates.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
    finally:
        executor.shutdown()
    print(f"decode tok/s best {max(rates):.0f} (runs: {', '.join(f'{r:.0f}' for r in rates)})")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 5)
