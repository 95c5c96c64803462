"""Executor configuration types, mirroring TensorRT-LLM's executor bindings.

ExecutorConfig and its parts (SchedulerConfig, KvCacheConfig, PeftCacheConfig, ...) are
plain data; validation of values happens here, interpretation in the executor.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from llmserve.core.errors import InvalidArgument
from llmserve.llm.kv_events import KvEventsConfig


class ModelType(enum.Enum):
    DECODER_ONLY = "decoder_only"
    ENCODER_ONLY = "encoder_only"
    ENCODER_DECODER = "encoder_decoder"


class CapacitySchedulerPolicy(enum.Enum):
    # admit only requests whose worst case (prompt + max_tokens) fits next to the
    # worst cases of those already running: a started request is never paused
    GUARANTEED_NO_EVICT = "guaranteed_no_evict"
    # admit greedily; when blocks run out, pause the newest and recompute it later
    MAX_UTILIZATION = "max_utilization"
    # admit a batch only when nothing runs, then run it to completion
    STATIC_BATCH = "static_batch"


class BatchingType(enum.Enum):
    INFLIGHT = "inflight"
    STATIC = "static"  # same as CapacitySchedulerPolicy.STATIC_BATCH


@dataclass(slots=True)
class SchedulerConfig:
    capacity_scheduler_policy: CapacitySchedulerPolicy = (
        CapacitySchedulerPolicy.GUARANTEED_NO_EVICT
    )


@dataclass(slots=True)
class KvCacheConfig:
    """host_cache_size: bytes of host memory that reusable blocks evicted from the device
    cache move to (and come back from on a prefix hit; needs enable_block_reuse).
    max_attention_window: keys a query attends to (its own included), one value or one
    per layer (repeated over the layers); blocks outside every layer's window are freed.
    sink_token_length: first tokens that windowed layers always attend to
    (llmserve/llm/attention_window.py)."""

    enable_block_reuse: bool = False
    max_tokens: int | None = None
    free_gpu_memory_fraction: float | None = 0.9
    host_cache_size: int | None = None
    max_attention_window: list[int] | int | None = None
    sink_token_length: int | None = None


@dataclass(slots=True)
class PeftCacheConfig:
    """LoRA cache sizing (llmserve/llm/lora_cache.py): page size from the adapter sizes,
    device level = device_cache_percent of the memory free after the KV cache (CUDA),
    host level = host_cache_size bytes (None: 1 GiB); adapters of lora_prefetch_dir
    (<dir>/<task_id>/model.lora_weights.npy + model.lora_config.npy) load at start-up."""

    optimal_adapter_size: int = 8
    max_adapter_size: int = 64
    device_cache_percent: float | None = 0.05
    host_cache_size: int | None = None
    lora_prefetch_dir: str | None = None


class SpeculativeDecodingMode(enum.Enum):
    # draft tokens come with each request (ExternalDraftTokensConfig); always available
    EXTERNAL_DRAFT_TOKENS = "external_draft_tokens"
    # n-gram prompt lookup: drafts copied from earlier in the request's own tokens
    PROMPT_LOOKUP = "prompt_lookup"
    # a small draft model run by the executor itself proposes greedy drafts
    DRAFT_MODEL = "draft_model"


@dataclass(slots=True)
class PromptLookupConfig:
    """n-gram prompt lookup (llmserve/llm/ngram.py): the last n tokens (n from
    max_matching_ngram_size down to min_matching_ngram_size) are searched earlier in
    prompt + output and the max_draft_tokens tokens after the match become drafts."""

    max_draft_tokens: int = 4
    max_matching_ngram_size: int = 3
    min_matching_ngram_size: int = 1


@dataclass(slots=True)
class SpeculativeDecodingConfig:
    """fast_logits: TensorRT-LLM's direct draft-to-target logits transfer (no effect here:
    draft logits always travel with the request). mode PROMPT_LOOKUP turns on n-gram
    drafts for every running non-beam request, sized by prompt_lookup. mode DRAFT_MODEL
    runs the checkpoint at draft_model_path (same vocabulary) inside the executor to
    propose num_draft_tokens greedy drafts per step (llmserve/llm/draft_model.py)."""

    fast_logits: bool = False
    mode: SpeculativeDecodingMode = SpeculativeDecodingMode.EXTERNAL_DRAFT_TOKENS
    prompt_lookup: PromptLookupConfig = field(default_factory=PromptLookupConfig)
    draft_model_path: str | None = None
    num_draft_tokens: int = 4

    def validate(self) -> None:
        if self.mode is SpeculativeDecodingMode.DRAFT_MODEL:
            if not self.draft_model_path:
                raise InvalidArgument("speculative mode draft_model needs draft_model_path")
            if self.num_draft_tokens < 1:
                raise InvalidArgument(
                    f"num_draft_tokens must be >= 1, got {self.num_draft_tokens}")
        pl = self.prompt_lookup
        if pl.max_draft_tokens < 1:
            raise InvalidArgument(
                f"prompt lookup max_draft_tokens must be >= 1, got {pl.max_draft_tokens}")
        if not 1 <= pl.min_matching_ngram_size <= pl.max_matching_ngram_size:
            raise InvalidArgument(
                "prompt lookup n-gram sizes must satisfy 1 <= min <= max, got min "
                f"{pl.min_matching_ngram_size}, max {pl.max_matching_ngram_size}")


class GuidedDecodingBackend(enum.Enum):
    XGRAMMAR = "xgrammar"


@dataclass(slots=True)
class GuidedDecodingConfig:
    """Guided decoding (llmserve/llm/guided/). As TensorRT-LLM's: the backend and the
    tokenizer's vocabulary (encoded_vocab in token id order, tokenizer_str: the Hugging
    Face tokenizer.json text, stop_token_ids), as generate_xgrammar_tokenizer_info.py
    writes them. llmserve's additions: tokenizer_dir, a Hugging Face tokenizer folder to
    read the vocabulary from when encoded_vocab is not given (default: the model's own
    folder), and json_any_whitespace: JSON guides allow any whitespace between tokens
    (xgrammar's any_whitespace) instead of compact JSON, which keeps weak models from
    looping on newlines. Without a GuidedDecodingConfig the executor still serves guided
    requests, with xgrammar over the model folder's tokenizer (TensorRT-LLM refuses them)."""

    GuidedDecodingBackend = GuidedDecodingBackend

    backend: GuidedDecodingBackend = GuidedDecodingBackend.XGRAMMAR
    encoded_vocab: list[str] | None = None
    tokenizer_str: str | None = None
    stop_token_ids: list[int] | None = None
    tokenizer_dir: str | None = None
    json_any_whitespace: bool = False


@dataclass(slots=True)
class ExecutorConfig:
    max_beam_width: int = 1
    scheduler_config: SchedulerConfig = field(default_factory=SchedulerConfig)
    kv_cache_config: KvCacheConfig = field(default_factory=KvCacheConfig)
    enable_chunked_context: bool = False
    max_batch_size: int | None = None  # None: 64
    max_num_tokens: int | None = None  # None: 8192 tokens per step
    max_queue_size: int | None = None  # None or <= 0: unbounded
    max_seq_len: int | None = None  # None: the checkpoint's max_position_embeddings
    batching_type: BatchingType = BatchingType.INFLIGHT
    lora_config: PeftCacheConfig | None = None
    speculative_decoding_config: SpeculativeDecodingConfig | None = None
    guided_decoding_config: GuidedDecodingConfig | None = None
    iter_stats_max_iterations: int = 1000
    request_stats_max_iterations: int = 0
    # True: TensorRT-LLM's normalised log probs, log P(token | the top-k/top-p set it was
    # sampled from) (0.0 for greedy); False or None (llmserve's default): log P(token |
    # vocabulary), the value OpenAI reports. TensorRT-LLM defaults to True.
    normalize_log_probs: bool | None = None
    tokens_per_block: int = 32
    # KV cache events for KV-aware routers (vLLM's format; needs enable_block_reuse)
    kv_events_config: KvEventsConfig | None = None
    # Engine placement (TensorRT-LLM fixes these at engine build time).
    device: str | None = None  # None: "cuda" when available, else "cpu"
    dtype: str = "auto"
    # TensorRT-LLM's weight-only quantisation (--weight_only_precision): "int8" stores
    # the decoder layers' GEMM weights as int8 with per-channel scales (CPU only)
    weight_only_precision: str | None = None
    # Tensor parallelism (TensorRT-LLM's engine mapping tp_size; vLLM's and TensorRT-LLM's
    # LLM API tensor_parallel_size): the model split across this many ranks, rank 0 in
    # this process and ranks 1.. in worker processes (llmserve/llm/engine/tp_runner.py).
    # device_ids: on CUDA, rank i's GPU (TensorRT-LLM's ParallelConfig.device_ids).
    tensor_parallel_size: int = 1
    device_ids: list[int] | None = None

    def validate(self) -> None:
        if self.max_beam_width < 1:
            raise InvalidArgument(f"max_beam_width must be >= 1, got {self.max_beam_width}")
        if self.tokens_per_block < 1:
            raise InvalidArgument(
                f"tokens_per_block must be >= 1, got {self.tokens_per_block}"
            )
        if self.max_batch_size is not None and self.max_batch_size < 1:
            raise InvalidArgument(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.max_num_tokens is not None and self.max_num_tokens < 1:
            raise InvalidArgument(f"max_num_tokens must be >= 1, got {self.max_num_tokens}")
        kv = self.kv_cache_config
        if kv.max_tokens is not None and kv.max_tokens < 1:
            raise InvalidArgument(f"kv_cache_config.max_tokens must be >= 1, got {kv.max_tokens}")
        if kv.host_cache_size is not None and kv.host_cache_size < 0:
            raise InvalidArgument(
                f"kv_cache_config.host_cache_size must be >= 0, got {kv.host_cache_size}")
        fraction = kv.free_gpu_memory_fraction
        if fraction is not None and not 0.0 < fraction <= 1.0:
            raise InvalidArgument(
                f"kv_cache_config.free_gpu_memory_fraction must be in (0, 1], got {fraction}"
            )
        if self.speculative_decoding_config is not None:
            self.speculative_decoding_config.validate()
        if self.tensor_parallel_size < 1:
            raise InvalidArgument(
                f"tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")
        from llmserve.llm.engine.quant import parse_weight_only_precision

        parse_weight_only_precision(self.weight_only_precision)  # raises for a bad value

    @property
    def effective_policy(self) -> CapacitySchedulerPolicy:
        if self.batching_type is BatchingType.STATIC:
            return CapacitySchedulerPolicy.STATIC_BATCH
        return self.scheduler_config.capacity_scheduler_policy


DEFAULT_MAX_BATCH_SIZE = 64
DEFAULT_MAX_NUM_TOKENS = 8192
