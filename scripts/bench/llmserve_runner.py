"""Runs benchmark workloads on llmserve's Executor in this process, through its asyncio
API (enqueue_request + iter_responses), as the OpenAI/KServe frontends use it."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from bench.workload import BenchRequest, Timing


@dataclass(slots=True)
class LlmserveSettings:
    max_batch_size: int = 64
    max_num_tokens: int = 2048
    enable_chunked_context: bool = True
    kv_tokens: int = 64 * 768
    tokens_per_block: int = 32


def make_executor(model: str, settings: LlmserveSettings):
    from llmserve.llm import Executor, ExecutorConfig, KvCacheConfig, ModelType

    config = ExecutorConfig(
        max_batch_size=settings.max_batch_size,
        max_num_tokens=settings.max_num_tokens,
        enable_chunked_context=settings.enable_chunked_context,
        kv_cache_config=KvCacheConfig(max_tokens=settings.kv_tokens,
                                      free_gpu_memory_fraction=None),
        tokens_per_block=settings.tokens_per_block,
        device="cpu",
        dtype="float32",
        iter_stats_max_iterations=0,
    )
    return Executor(model, ModelType.DECODER_ONLY, config)


async def _one(executor, req: BenchRequest, t0: float, streaming: bool) -> Timing:
    from llmserve.llm import OutputConfig, Request

    delay = t0 + req.arrival - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)
    arrival = time.perf_counter()
    request = Request(input_token_ids=req.prompt, max_tokens=req.max_tokens,
                      streaming=streaming, end_id=None,
                      output_config=OutputConfig(exclude_input_from_output=True))
    timing = Timing(arrival - t0)
    request_id = executor.enqueue_request(request)
    async for response in executor.iter_responses(request_id):
        if response.has_error():
            raise RuntimeError(f"llmserve request failed: {response.error_msg}")
        now = time.perf_counter() - t0
        new = len(response.result.output_token_ids[0])
        if streaming:
            timing.times.extend([now] * new)
            timing.tokens += new
        elif response.is_final:
            timing.times, timing.tokens = [now], new
    return timing


async def run_workload(executor, requests: list[BenchRequest], streaming: bool,
                       concurrency: int | None = None) -> list[Timing]:
    """All requests at their arrival times or, with `concurrency`, as a closed loop: at
    most that many in flight, the next sent as one ends."""
    t0 = time.perf_counter()
    if concurrency is None:
        return list(await asyncio.gather(*[_one(executor, r, t0, streaming) for r in requests]))
    slots = asyncio.Semaphore(concurrency)

    async def bounded(r: BenchRequest) -> Timing:
        async with slots:
            return await _one(executor, r, t0, streaming)

    return list(await asyncio.gather(*[bounded(r) for r in requests]))


def run(model: str, workloads: dict[str, tuple[list[BenchRequest], bool]],
        warmup: list[BenchRequest], settings: LlmserveSettings) -> dict[str, list[Timing]]:
    """Load the model once, warm up, then run each named workload in order."""
    executor = make_executor(model, settings)
    try:
        asyncio.run(run_workload(executor, warmup, True))
        return {name: asyncio.run(run_workload(executor, reqs, streaming))
                for name, (reqs, streaming) in workloads.items()}
    finally:
        executor.shutdown()
