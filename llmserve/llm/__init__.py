"""The LLM executor: inflight batching on a paged KV cache over the PyTorch engine.

The public names mirror TensorRT-LLM's executor Python bindings.
"""

from llmserve.llm.config import (
    BatchingType,
    CapacitySchedulerPolicy,
    ExecutorConfig,
    GuidedDecodingConfig,
    KvCacheConfig,
    ModelType,
    PeftCacheConfig,
    PromptLookupConfig,
    SchedulerConfig,
    SpeculativeDecodingConfig,
    SpeculativeDecodingMode,
)
from llmserve.llm.executor import Executor
from llmserve.llm.kv_events import KvEventsConfig
from llmserve.llm.request import (
    ExternalDraftTokensConfig,
    FinishReason,
    GuidedDecodingParams,
    KvCacheMetrics,
    LoraConfig,
    OutputConfig,
    PromptTuningConfig,
    Request,
    RequestPerfMetrics,
    Response,
    Result,
    SamplingConfig,
    SpeculativeDecodingMetrics,
    TimingMetrics,
)
from llmserve.llm.stats import (
    InflightBatchingStats,
    IterationStats,
    KvCacheStats,
    RequestStage,
    RequestStats,
    RequestStatsPerIteration,
)

__all__ = [
    "BatchingType",
    "CapacitySchedulerPolicy",
    "Executor",
    "ExecutorConfig",
    "ExternalDraftTokensConfig",
    "FinishReason",
    "GuidedDecodingConfig",
    "GuidedDecodingParams",
    "InflightBatchingStats",
    "IterationStats",
    "KvCacheConfig",
    "KvEventsConfig",
    "KvCacheMetrics",
    "KvCacheStats",
    "LoraConfig",
    "ModelType",
    "OutputConfig",
    "PeftCacheConfig",
    "PromptLookupConfig",
    "PromptTuningConfig",
    "Request",
    "RequestPerfMetrics",
    "RequestStage",
    "RequestStats",
    "RequestStatsPerIteration",
    "Response",
    "Result",
    "SamplingConfig",
    "SchedulerConfig",
    "SpeculativeDecodingConfig",
    "SpeculativeDecodingMode",
    "SpeculativeDecodingMetrics",
    "TimingMetrics",
]
