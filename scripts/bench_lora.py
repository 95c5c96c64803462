"""LoRA batching cost: the same 16-request decode workload through the executor with no
adapter, a mix of two adapters and none, and every request on one adapter.

    .venv/bin/python scripts/bench_lora.py [--hidden 256 --layers 4 --requests 16 --tokens 32]

Builds a random Llama and two random rank-r PEFT-layout adapters (tests/llm_fixtures.py,
tests/lora_fixtures.py; needs the [test] extra for peft), converts them with
tools/convert_peft_lora.py and prints output tokens/s per mix.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def run(executor, mix: list[int | None], lora_rows: dict, prompt_len: int, tokens: int) -> float:
    from llmserve.llm import LoraConfig, Request

    # Send each adapter's weights once, so the timed run measures compute, not uploads.
    for task_id, (weights, config) in lora_rows.items():
        rid = executor.enqueue_request(Request([5] * 4, 1, lora_config=LoraConfig(
            task_id, torch.from_numpy(weights), torch.from_numpy(config))))
        executor.await_responses(rid, timeout=datetime.timedelta(seconds=60))
    start = time.perf_counter()
    ids = []
    for i, task in enumerate(mix):
        prompt = [(7 * i + j) % 250 + 3 for j in range(prompt_len)]
        lora = LoraConfig(task) if task is not None else None
        ids.append(executor.enqueue_request(Request(prompt, tokens, lora_config=lora)))
    done = 0
    while done < len(ids):
        for r in executor.await_responses(timeout=datetime.timedelta(seconds=60)):
            if r.has_error():
                raise RuntimeError(r.error_msg)
            done += int(r.result.is_final)
    return len(mix) * tokens / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    # This thread builds the checkpoint and adapters with one torch thread, so that the
    # executor's engine thread owns the process's only OpenMP pool (see
    # llmserve/llm/engine_thread.py); the engine gets --threads.
    torch.set_num_threads(1)
    os.environ["LLMSERVE_ENGINE_THREADS"] = str(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from llm_fixtures import make_tiny_checkpoint
    from lora_fixtures import lora_tensors, make_peft_adapter

    from llmserve.llm import Executor, ExecutorConfig, KvCacheConfig, ModelType

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_tiny_checkpoint(Path(tmp) / "base", hidden_size=args.hidden,
                                    intermediate_size=args.hidden * 2,
                                    num_layers=args.layers)
        rows = {}
        for task_id in (1, 2):
            adapter = make_peft_adapter(ckpt, Path(tmp) / f"lora{task_id}", seed=task_id,
                                        r=args.rank)
            rows[task_id] = lora_tensors(adapter)
        config = ExecutorConfig(kv_cache_config=KvCacheConfig(max_tokens=16384))
        n = args.requests
        mixes = {
            "no LoRA": [None] * n,
            "mixed A / B / none": [(1, 2, None)[i % 3] for i in range(n)],
            "all on adapter A": [1] * n,
        }
        print(f"| mix | output tok/s | vs no LoRA |  (hidden {args.hidden}, {args.layers} "
              f"layers, rank {args.rank}, {n} requests x {args.tokens} tokens)")
        print("|---|---|---|")
        base = None
        with Executor(ckpt, ModelType.DECODER_ONLY, config) as executor:
            run(executor, [None] * 2, {}, args.prompt_len, 4)  # warm-up
            for name, mix in mixes.items():
                tps = run(executor, mix, rows, args.prompt_len, args.tokens)
                base = base or tps
                print(f"| {name} | {tps:.0f} | {tps / base:.2f}x |")


if __name__ == "__main__":
    main()
