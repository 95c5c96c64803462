"""Iteration and per-request statistics, shaped like TensorRT-LLM's executor stats.

The executor records one IterationStats per step (and, when enabled, the RequestStats
of every live request) into bounded deques that the get_latest_* calls drain.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field


class RequestStage(enum.Enum):
    QUEUED = "QUEUED"
    ENCODER_IN_PROGRESS = "ENCODER_IN_PROGRESS"
    CONTEXT_IN_PROGRESS = "CONTEXT_IN_PROGRESS"
    GENERATION_IN_PROGRESS = "GENERATION_IN_PROGRESS"
    GENERATION_COMPLETE = "GENERATION_COMPLETE"


@dataclass(slots=True)
class KvCacheStats:
    max_num_blocks: int = 0
    free_num_blocks: int = 0
    used_num_blocks: int = 0
    tokens_per_block: int = 0
    cached_num_blocks: int = 0  # blocks holding a reusable prefix (in use or free)
    alloc_total_blocks: int = 0  # this step
    alloc_new_blocks: int = 0  # this step
    reused_blocks: int = 0  # this step
    cache_hit_rate: float = 0.0  # reused / (reused + new), over the executor's life


@dataclass(slots=True)
class InflightBatchingStats:
    num_scheduled_requests: int = 0
    num_context_requests: int = 0
    num_gen_requests: int = 0
    num_paused_requests: int = 0
    num_ctx_tokens: int = 0
    num_gen_tokens: int = 0
    micro_batch_id: int = 0


@dataclass(slots=True)
class IterationStats:
    timestamp: str = ""
    iter: int = 0
    iter_latency_ms: float = 0.0
    num_active_requests: int = 0
    num_queued_requests: int = 0
    num_completed_requests: int = 0
    max_num_active_requests: int = 0
    num_new_active_requests: int = 0
    num_preempted_requests: int = 0
    num_tokens: int = 0  # tokens run through the model this step
    kv_cache_stats: KvCacheStats = field(default_factory=KvCacheStats)
    inflight_batching_stats: InflightBatchingStats = field(default_factory=InflightBatchingStats)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json_str(self) -> str:
        return json.dumps(self.to_dict())


@dataclass(slots=True)
class RequestStats:
    id: int
    stage: RequestStage
    context_prefill_position: int = 0
    num_generated_tokens: int = 0
    avg_num_decoded_tokens_per_iter: float = 0.0
    scheduled: bool = False
    paused: bool = False
    alloc_total_blocks_per_request: int = 0
    alloc_new_blocks_per_request: int = 0
    reused_blocks_per_request: int = 0
    missed_blocks_per_request: int = 0
    kv_cache_hit_rate_per_request: float = 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stage"] = self.stage.value
        return d


@dataclass(slots=True)
class RequestStatsPerIteration:
    iter: int
    request_stats: list[RequestStats] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"iter": self.iter, "request_stats": [r.to_dict() for r in self.request_stats]}

    def to_json_str(self) -> str:
        return json.dumps(self.to_dict())
