"""Workload (a) of scripts/bench_executor.py on llmserve alone, for profilers:

    py-spy record -r 200 --threads -f raw -o prof.txt -- \\
        .venv/bin/python scripts/bench/profile_workload_a.py models/demo-llm

Prints output tokens/s of the 64 mixed requests (after a small warm-up).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import llmserve_runner  # noqa: E402
from bench.workload import make_requests  # noqa: E402


def main(model: str) -> None:
    cfg = json.loads((Path(model) / "config.json").read_text())
    max_len = cfg.get("max_position_embeddings", 2048)
    requests = make_requests(64, cfg["vocab_size"], max_len, seed=0)
    warm = make_requests(4, cfg["vocab_size"], max_len, seed=99, prompt_range=(8, 64),
                         output_range=(4, 8))
    executor = llmserve_runner.make_executor(model, llmserve_runner.LlmserveSettings())
    try:
        asyncio.run(llmserve_runner.run_workload(executor, warm, True))
        start = time.perf_counter()
        asyncio.run(llmserve_runner.run_workload(executor, requests, False))
        elapsed = time.perf_counter() - start
    finally:
        executor.shutdown()
    print(f"output tok/s {sum(r.max_tokens for r in requests) / elapsed:.1f}")


if __name__ == "__main__":
    main(sys.argv[1])
