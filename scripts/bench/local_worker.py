"""Runs the benchmark workloads on llmserve or transformers in a process of its own,
as scripts/bench/vllm_worker.py does for vLLM, so no system shares a process (and its
torch/OpenMP thread pools) with another or with the orchestrator.

    python local_worker.py llmserve|hf SPEC.json OUT.json

SPEC and OUT have vllm_worker.py's format; SPEC also carries "settings" (llmserve) or
"hf_batch_sizes" (name -> static batch size, hf).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import hf_runner, llmserve_runner  # noqa: E402
from bench.workload import BenchRequest  # noqa: E402


def _requests(items: list[dict]) -> list[BenchRequest]:
    return [BenchRequest(**r) for r in items]


def main(system: str, spec: dict) -> dict:
    warm = _requests(spec["warmup"])
    t_load = time.perf_counter()
    if system == "llmserve":
        works = {name: (_requests(w["requests"]), w["streaming"])
                 for name, w in spec["workloads"].items()}
        settings = llmserve_runner.LlmserveSettings(**spec["settings"])
        timings = llmserve_runner.run(spec["model"], works, warm, settings)
    elif system == "hf":
        works = {name: (_requests(w["requests"]), spec["hf_batch_sizes"][name])
                 for name, w in spec["workloads"].items()}
        timings = hf_runner.run(spec["model"], works, warm)
    else:
        raise SystemExit(f"unknown system {system}")
    return {"version": None, "wall_s": time.perf_counter() - t_load,
            "workloads": {name: {"requests": [asdict(t) for t in ts]}
                          for name, ts in timings.items()}}


if __name__ == "__main__":
    with open(sys.argv[2]) as f:
        spec_in = json.load(f)
    result = main(sys.argv[1], spec_in)
    with open(sys.argv[3], "w") as f:
        json.dump(result, f)
