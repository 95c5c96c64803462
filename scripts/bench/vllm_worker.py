"""Runs the benchmark workloads on vLLM (CPU build) inside vLLM's own virtualenv.

Started by scripts/bench_executor.py as `VLLM_VENV/bin/python vllm_worker.py IN OUT`;
needs only the standard library and vllm. Reads the workloads (token-id prompts, output
lengths, arrival offsets) from IN and writes raw per-request token timestamps to OUT.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time


def _engine_args(spec: dict):
    from vllm.engine.arg_utils import AsyncEngineArgs

    return AsyncEngineArgs(
        model=spec["model"],
        dtype="float32",
        max_model_len=spec["max_model_len"],
        max_num_seqs=spec["max_num_seqs"],
        seed=0,
        disable_log_stats=True,
        enable_prefix_caching=False,
    )


async def _one(engine, req: dict, index: int, t0: float, streaming: bool) -> dict:
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind, SamplingParams

    n = req["max_tokens"]
    params = SamplingParams(
        temperature=0.0, max_tokens=n, min_tokens=n, ignore_eos=True, detokenize=False,
        output_kind=RequestOutputKind.DELTA if streaming else RequestOutputKind.FINAL_ONLY,
    )
    delay = t0 + req["arrival"] - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)
    arrival = time.perf_counter()
    times: list[float] = []
    count = 0
    async for out in engine.generate(TokensPrompt(prompt_token_ids=req["prompt"]), params,
                                     request_id=f"r{index}-{time.monotonic_ns()}"):
        now = time.perf_counter()
        new = len(out.outputs[0].token_ids)
        count = count + new if streaming else new
        times.extend([now] * (new if streaming else 0))
        if not streaming and out.finished:
            times = [now]
    return {"arrival": arrival - t0, "scheduled_arrival": req["arrival"],
            "times": [t - t0 for t in times], "tokens": count}


async def _run_workload(engine, requests: list[dict], streaming: bool) -> dict:
    t0 = time.perf_counter()
    results = await asyncio.gather(*[_one(engine, r, i, t0, streaming)
                                     for i, r in enumerate(requests)])
    return {"requests": list(results), "wall_s": time.perf_counter() - t0}


async def _main(spec: dict) -> dict:
    import vllm
    from vllm.v1.engine.async_llm import AsyncLLM

    t_load = time.perf_counter()
    engine = AsyncLLM.from_engine_args(_engine_args(spec))
    load_s = time.perf_counter() - t_load
    out = {"version": vllm.__version__, "load_s": load_s, "workloads": {}}
    try:
        await _run_workload(engine, spec["warmup"], streaming=True)
        for name, work in spec["workloads"].items():
            out["workloads"][name] = await _run_workload(engine, work["requests"],
                                                         work["streaming"])
    finally:
        engine.shutdown()
    return out


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    result = asyncio.run(_main(spec))
    with open(sys.argv[2], "w") as f:
        json.dump(result, f)
