"""How much one executor's stream stalls while another model loads in the process.

The serving executor (the demo model) streams one request; meanwhile a second Executor
is built on MODEL (default: the 80M random Llama of bench_executor.py). Prints the
tokens that arrived during the load, the longest gap between tokens, and the median
inter-token latency before, during and after the load.

    .venv/bin/python scripts/bench/load_while_serving.py [MODEL]
"""

from __future__ import annotations

import datetime
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def stream(executor, n: int) -> list[float]:
    from llmserve.llm import Request

    rid = executor.enqueue_request(Request(list(range(5, 21)), n, streaming=True, end_id=None))
    stamps: list[float] = []
    while True:
        for response in executor.await_responses(rid, datetime.timedelta(seconds=60)):
            stamps.append(time.perf_counter())
            if response.is_final:
                return stamps


def gaps_ms(stamps: list[float]) -> list[float]:
    return [(b - a) * 1e3 for a, b in zip(stamps[:-1], stamps[1:], strict=True)]


def main(model: str) -> None:
    torch.set_num_threads(1)  # this thread does no torch work
    os.environ.setdefault("LLMSERVE_ENGINE_THREADS", "2")
    from llmserve.llm import Executor, ExecutorConfig, KvCacheConfig

    config = ExecutorConfig(kv_cache_config=KvCacheConfig(max_tokens=4096))
    serving = Executor(ROOT / "models" / "demo-llm", executor_config=config)
    before = [statistics.median(gaps_ms(stream(serving, 200))) for _ in range(3)]
    span: list[float] = []
    loaded: list = []

    def load() -> None:
        time.sleep(0.05)  # start once the stream runs
        span.append(time.perf_counter())
        loaded.append(Executor(model, executor_config=config))
        span.append(time.perf_counter())

    loader = threading.Thread(target=load)
    loader.start()
    stamps = stream(serving, 490)
    loader.join()
    start, end = span
    inside = [t for t in stamps if start <= t <= end]
    after = [statistics.median(gaps_ms(stream(serving, 200))) for _ in range(3)]
    print(f"load of {model}: {end - start:.2f} s; {len(inside)} tokens streamed meanwhile, "
          f"longest gap {max(gaps_ms(stamps)):.0f} ms, median gap during "
          f"{statistics.median(gaps_ms(inside) or [float('nan')]):.2f} ms")
    print(f"median inter-token ms before: {', '.join(f'{x:.2f}' for x in before)}; "
          f"after: {', '.join(f'{x:.2f}' for x in after)}")
    for executor in [serving, *loaded]:
        executor.shutdown()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "build/bench/random-llama-80m"))
