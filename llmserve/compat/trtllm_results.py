"""Responses and statistics of llmserve's executor, shaped as TensorRT-LLM's bindings
give them: timing metrics as datetime.timedelta, logits as float32 CPU tensors (streamed
generation logits [tokens, beams, vocab]), log probs one equal-length row per beam,
iteration stats with memory usage and TensorRT-LLM's camelCase JSON.
"""

from __future__ import annotations

import datetime
import enum
import json
from dataclasses import dataclass, fields, is_dataclass

import torch

from llmserve import llm


@dataclass(slots=True)
class TimingMetrics:
    """TensorRT-LLM's steady-clock time points, as timedeltas since the clock's epoch."""

    arrival_time: datetime.timedelta
    first_scheduled_time: datetime.timedelta
    first_token_time: datetime.timedelta
    last_token_time: datetime.timedelta
    kv_cache_transfer_start: datetime.timedelta = datetime.timedelta(0)
    kv_cache_transfer_end: datetime.timedelta = datetime.timedelta(0)
    kv_cache_size: int = 0


def _since_epoch(ns: int) -> datetime.timedelta:
    return datetime.timedelta(microseconds=ns / 1000)


def shape_response(response: llm.Response, streaming: bool) -> llm.Response:
    """Reshape response's result in place (the compat executor owns it) and return it."""
    result = response.result
    if result is None:
        return response
    if result.log_probs is not None:
        width = max((len(row) for row in result.log_probs), default=0)
        # beams of different lengths: padded so the rows make one array
        result.log_probs = [list(row) + [0.0] * (width - len(row)) for row in result.log_probs]
    if result.context_logits is not None:
        result.context_logits = result.context_logits.detach().to("cpu", torch.float32)
    if result.generation_logits is not None:
        logits = result.generation_logits.detach().to("cpu", torch.float32)
        # TensorRT-LLM: [beams, tokens, vocab] at the end, [tokens, beams, vocab] streamed
        result.generation_logits = logits.transpose(0, 1).contiguous() if streaming else logits
    metrics = result.request_perf_metrics
    if metrics is not None and not isinstance(metrics.timing_metrics, TimingMetrics):
        t = metrics.timing_metrics
        metrics.timing_metrics = TimingMetrics(  # type: ignore[assignment]
            _since_epoch(t.arrival_time), _since_epoch(t.first_scheduled_time),
            _since_epoch(t.first_token_time), _since_epoch(t.last_token_time))
    return response


# -- statistics ---------------------------------------------------------------------------

def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join("MS" if part == "ms" else part[:1].upper() + part[1:] for part in rest)


def _jsonable(value: object) -> object:
    if is_dataclass(value):
        return {_camel(f.name): _jsonable(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, enum.Enum):
        return value.name if isinstance(value.value, int) else value.value
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


@dataclass(slots=True)
class StaticBatchingStats:
    num_scheduled_requests: int = 0
    num_context_requests: int = 0
    num_ctx_tokens: int = 0
    num_gen_tokens: int = 0
    empty_gen_slots: int = 0


@dataclass(slots=True)
class IterationStats(llm.IterationStats):
    """llmserve's IterationStats plus TensorRT-LLM's memory fields and optional parts."""

    gpu_mem_usage: int = 0
    cpu_mem_usage: int = 0
    pinned_mem_usage: int = 0  # llmserve allocates no pinned host buffers
    static_batching_stats: StaticBatchingStats | None = None
    cross_kv_cache_stats: llm.KvCacheStats | None = None
    specdec_stats: object = None

    def to_json_str(self) -> str:
        return json.dumps(_jsonable(self))


@dataclass(slots=True)
class RequestStatsPerIteration(llm.RequestStatsPerIteration):
    def to_json_str(self) -> str:
        return json.dumps(_jsonable(self))


def iteration_stats(stats: llm.IterationStats, memory: dict[str, int],
                    static: bool) -> IterationStats:
    """TensorRT-LLM's view of one step: static batching reports static_batching_stats in
    place of inflight_batching_stats."""
    out = IterationStats(**{f.name: getattr(stats, f.name) for f in fields(llm.IterationStats)},
                         **memory)
    if static:
        ifb = stats.inflight_batching_stats
        out.static_batching_stats = StaticBatchingStats(
            num_scheduled_requests=ifb.num_scheduled_requests,
            num_context_requests=ifb.num_context_requests,
            num_ctx_tokens=ifb.num_ctx_tokens,
            num_gen_tokens=ifb.num_gen_tokens,
            # batch slots left idle this step
            empty_gen_slots=max(0, stats.max_num_active_requests - ifb.num_scheduled_requests),
        )
        out.inflight_batching_stats = None  # type: ignore[assignment]
    return out


def request_stats(stats: llm.RequestStatsPerIteration) -> RequestStatsPerIteration:
    return RequestStatsPerIteration(stats.iter, stats.request_stats)


class EngineMemory:
    """Bytes the engine holds: its weight and KV cache tensors on the host (counted once,
    they never change) and everything torch has allocated on its CUDA device."""

    def __init__(self, runner: object) -> None:
        self.device = torch.device(getattr(getattr(runner, "arch", None), "device", "cpu"))
        self.host_bytes = _tensor_bytes(runner, "cpu")

    def usage(self) -> dict[str, int]:
        gpu = 0
        if self.device.type == "cuda":
            gpu = int(torch.cuda.memory_allocated(self.device))
        return {"gpu_mem_usage": gpu, "cpu_mem_usage": self.host_bytes}


def _tensor_bytes(root: object, device_type: str) -> int:
    """Bytes of the distinct tensors on device_type reachable from root through object
    attributes, lists, tuples and dicts (storages shared by views counted once)."""
    seen_objects: set[int] = set()
    storages: dict[int, int] = {}
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen_objects:
            continue
        seen_objects.add(id(obj))
        if isinstance(obj, torch.Tensor):
            if obj.device.type == device_type:
                storage = obj.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple)):
            stack.extend(obj)
        elif hasattr(obj, "__dict__") and type(obj).__module__.startswith("llmserve."):
            stack.extend(vars(obj).values())
    return sum(storages.values())
