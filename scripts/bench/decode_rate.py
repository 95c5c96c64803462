"""Batch-1 decode tokens/s of the executor: one streamed request of 256 tokens after a
16-token prompt, repeated RUNS times in one process; prints the best and every run,
and the process's CPU time per token (less sensitive than wall time to other jobs on a
shared machine; with 2 engine threads it includes OpenMP's spin-waiting).
Used for A/B comparisons of engine changes (run the two trees alternately).

    .venv/bin/python scripts/bench/decode_rate.py MODEL [RUNS] [--dtype auto]
        [--weight-only-precision int8]

LLMSERVE_ENGINE_THREADS sets the engine's threads (default 2 here).
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def main(model: str, runs: int, dtype: str, weight_only_precision: str | None) -> None:
    torch.set_num_threads(1)  # this thread does no torch work: the engine thread does
    os.environ.setdefault("LLMSERVE_ENGINE_THREADS", "2")
    from load_while_serving import stream  # this folder: one streaming loop for both

    from llmserve.llm import Executor, ExecutorConfig, KvCacheConfig

    executor = Executor(model, executor_config=ExecutorConfig(
        kv_cache_config=KvCacheConfig(max_tokens=4096), dtype=dtype,
        weight_only_precision=weight_only_precision))

    try:
        stream(executor, 16)  # warm-up
        rates, cpu_ms = [], []
        for _ in range(runs):
            cpu = time.process_time()
            stamps = stream(executor, 256)
            cpu_ms.append((time.process_time() - cpu) * 1e3 / len(stamps))
            rates.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
    finally:
        executor.shutdown()
    print(f"decode tok/s best {max(rates):.0f} (runs: {', '.join(f'{r:.0f}' for r in rates)}); "
          f"CPU ms/token best {min(cpu_ms):.2f} (runs: {', '.join(f'{c:.2f}' for c in cpu_ms)})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("runs", nargs="?", type=int, default=5)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--weight-only-precision", default=None)
    args = parser.parse_args()
    main(args.model, args.runs, args.dtype, args.weight_only_precision)
