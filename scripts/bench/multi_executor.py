"""Batch-1 decode tokens/s of one executor while N executors live in the process:
checks that extra executors do not slow the engine (one OpenMP pool per process).

    .venv/bin/python scripts/bench/multi_executor.py N [MODEL]
"""

from __future__ import annotations

import datetime
import os
import sys
import time

import torch


def main(count: int, model: str) -> None:
    torch.set_num_threads(1)  # this thread does no torch work: the engine thread does
    os.environ.setdefault("LLMSERVE_ENGINE_THREADS", "2")
    from llmserve.llm import Executor, ExecutorConfig, KvCacheConfig, Request

    executors = [Executor(model, executor_config=ExecutorConfig(
        kv_cache_config=KvCacheConfig(max_tokens=4096))) for _ in range(count)]

    def generate(executor, n: int) -> None:
        rid = executor.enqueue_request(Request(list(range(5, 21)), n, end_id=None))
        out = []
        while not (out and out[-1].is_final):
            out += executor.await_responses(rid, datetime.timedelta(seconds=60))

    try:
        for executor in executors:
            generate(executor, 8)
        start = time.perf_counter()
        for _ in range(4):
            generate(executors[0], 128)
        print(f"{count} executors: {4 * 128 / (time.perf_counter() - start):.0f} tok/s")
    finally:
        for executor in executors:
            executor.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "models/demo-llm")
