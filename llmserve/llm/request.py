"""Request and response types of the executor API, mirroring TensorRT-LLM's bindings.

Request carries the prompt, SamplingConfig, OutputConfig and optional stop/bad words,
embedding bias, LoRA, a p-tuning prompt table, draft tokens and a guide
(GuidedDecodingParams); Response carries either an error or a Result.
"""

from __future__ import annotations

import enum
import math
from dataclasses import InitVar, dataclass, field

import torch

from llmserve.core.errors import InvalidArgument


class FinishReason(enum.Enum):
    NOT_FINISHED = 0
    END_ID = 1
    STOP_WORDS = 2
    LENGTH = 3
    TIMED_OUT = 4
    CANCELLED = 5


@dataclass(slots=True)
class SamplingConfig:
    """Per-request sampling. Greedy unless top_k > 1 or top_p > 0 (TensorRT-LLM's rule);
    temperature == 0 or top_k == 1 also mean greedy."""

    beam_width: int = 1
    top_k: int | None = None
    top_p: float | None = None
    top_p_min: float | None = None
    top_p_reset_ids: int | None = None
    top_p_decay: float | None = None
    seed: int | None = None
    temperature: float | None = None
    min_tokens: int | None = None
    beam_search_diversity_rate: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    length_penalty: float | None = None
    early_stopping: int | None = None
    no_repeat_ngram_size: int | None = None
    num_return_sequences: int | None = None
    random_seed: InitVar[int | None] = None  # older name of `seed`; both are accepted

    def __post_init__(self, random_seed: int | None) -> None:
        if random_seed is not None:
            self.seed = random_seed

    def validate(self) -> None:
        # NaN fails every range check below only by luck of comparison order, and an
        # infinite value passes some; neither means anything to the sampler.
        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise InvalidArgument(f"{name} must be a finite number, got {value}")
        if self.beam_width < 1:
            raise InvalidArgument(f"beam_width must be >= 1, got {self.beam_width}")
        if self.top_k is not None and self.top_k < 0:
            raise InvalidArgument(f"top_k must be >= 0, got {self.top_k}")
        if self.top_p is not None and not 0.0 <= self.top_p <= 1.0:
            raise InvalidArgument(f"top_p must be in [0, 1], got {self.top_p}")
        if self.top_p_min is not None and not 0.0 < self.top_p_min <= 1.0:
            raise InvalidArgument(f"top_p_min must be in (0, 1], got {self.top_p_min}")
        if self.top_p_decay is not None and not 0.0 < self.top_p_decay <= 1.0:
            raise InvalidArgument(f"top_p_decay must be in (0, 1], got {self.top_p_decay}")
        if self.temperature is not None and self.temperature < 0.0:
            raise InvalidArgument(f"temperature must be >= 0, got {self.temperature}")
        if self.repetition_penalty is not None and self.repetition_penalty <= 0.0:
            raise InvalidArgument(
                f"repetition_penalty must be > 0, got {self.repetition_penalty}"
            )
        if self.min_tokens is not None and self.min_tokens < 0:
            raise InvalidArgument(f"min_tokens must be >= 0, got {self.min_tokens}")
        rate = self.beam_search_diversity_rate
        if rate is not None and rate < 0.0:
            raise InvalidArgument(f"beam_search_diversity_rate must be >= 0, got {rate}")
        n = self.num_return_sequences
        if n is not None and n < 1:
            raise InvalidArgument(f"num_return_sequences must be >= 1, got {n}")
        if self.no_repeat_ngram_size is not None and self.no_repeat_ngram_size < 0:
            raise InvalidArgument(
                f"no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}"
            )


_FLOAT_FIELDS = ("top_p", "top_p_min", "top_p_decay", "temperature",
                 "beam_search_diversity_rate", "repetition_penalty", "presence_penalty",
                 "frequency_penalty", "length_penalty")


def _get_random_seed(self: SamplingConfig) -> int | None:
    return self.seed


def _set_random_seed(self: SamplingConfig, value: int | None) -> None:
    self.seed = value


# Readable and writable under both names, as in TensorRT-LLM's bindings.
SamplingConfig.random_seed = property(  # type: ignore[assignment]
    _get_random_seed, _set_random_seed)


@dataclass(slots=True)
class OutputConfig:
    return_log_probs: bool = False
    return_context_logits: bool = False
    return_generation_logits: bool = False
    exclude_input_from_output: bool = False
    return_perf_metrics: bool = False


@dataclass(slots=True)
class LoraConfig:
    task_id: int
    weights: torch.Tensor | None = None
    config: torch.Tensor | None = None


@dataclass(slots=True)
class ExternalDraftTokensConfig:
    tokens: list[int]
    logits: torch.Tensor | None = None
    acceptance_threshold: float | None = None
    fast_logits: bool | None = None


class GuideType(enum.Enum):
    """What a guide constrains the output to (TensorRT-LLM's GuidedDecodingParams.GuideType;
    the values are the names the model set's guided_decoding_guide_type input takes)."""

    JSON = "json"  # any JSON document (an object or an array); no guide text
    JSON_SCHEMA = "json_schema"  # a JSON document valid under the JSON schema in guide
    REGEX = "regex"  # text matching the regular expression in guide (whole match)
    EBNF_GRAMMAR = "ebnf_grammar"  # text of the EBNF grammar in guide (root rule `root`)
    STRUCTURAL_TAG = "structural_tag"  # free text with tagged, schema-checked sections


@dataclass(slots=True)
class GuidedDecodingParams:
    """A request's guide: every sampled token keeps the output a prefix of the guide's
    language, and the request ends only where the guide allows (structured output)."""

    GuideType = GuideType  # as TensorRT-LLM spells it: GuidedDecodingParams.GuideType.JSON

    guide_type: GuideType
    guide: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.guide_type, str):
            try:
                self.guide_type = GuideType(self.guide_type.strip().lower())
            except ValueError:
                names = ", ".join(t.value for t in GuideType)
                raise InvalidArgument(
                    f"unknown guide type '{self.guide_type}'; expected one of {names}") from None


@dataclass(slots=True)
class PromptTuningConfig:
    """p-tuning: prompt token ids at or past the vocabulary size (vocab_size + i) embed as
    row i of embedding_table [rows, hidden] instead of a vocabulary row. With block reuse,
    input_token_extra_ids (one per prompt token; 0 for ordinary tokens, the same value
    for the same table) take part in the block hash, as in TensorRT-LLM."""

    embedding_table: torch.Tensor
    input_token_extra_ids: list[int] | None = None


@dataclass(slots=True)
class Request:
    input_token_ids: list[int]
    max_tokens: int
    streaming: bool = False
    sampling_config: SamplingConfig = field(default_factory=SamplingConfig)
    output_config: OutputConfig = field(default_factory=OutputConfig)
    end_id: int | None = None  # None or -1: no end id, generation runs to max_tokens
    pad_id: int | None = None
    bad_words: list[list[int]] | None = None
    stop_words: list[list[int]] | None = None
    embedding_bias: torch.Tensor | None = None  # [vocab_size] added to the logits
    external_draft_tokens_config: ExternalDraftTokensConfig | None = None
    lora_config: LoraConfig | None = None
    guided_decoding_params: GuidedDecodingParams | None = None
    prompt_tuning_config: PromptTuningConfig | None = None
    client_id: int | None = None
    priority: float = 0.5


@dataclass(slots=True)
class KvCacheMetrics:
    num_total_allocated_blocks: int = 0
    num_new_allocated_blocks: int = 0
    num_reused_blocks: int = 0
    num_missed_blocks: int = 0
    kv_cache_hit_rate: float = 0.0


@dataclass(slots=True)
class TimingMetrics:
    """Monotonic clock, nanoseconds (0 = not reached yet)."""

    arrival_time: int = 0
    first_scheduled_time: int = 0
    first_token_time: int = 0
    last_token_time: int = 0


@dataclass(slots=True)
class SpeculativeDecodingMetrics:
    acceptance_rate: float = 0.0
    total_accepted_draft_tokens: int = 0
    total_draft_tokens: int = 0


@dataclass(slots=True)
class RequestPerfMetrics:
    timing_metrics: TimingMetrics = field(default_factory=TimingMetrics)
    kv_cache_metrics: KvCacheMetrics = field(default_factory=KvCacheMetrics)
    speculative_decoding: SpeculativeDecodingMetrics = field(
        default_factory=SpeculativeDecodingMetrics
    )
    first_iter: int | None = None
    last_iter: int | None = None


@dataclass(slots=True)
class Result:
    is_final: bool
    output_token_ids: list[list[int]]  # one list per beam
    finish_reasons: list[FinishReason]
    cum_log_probs: list[float] | None = None
    log_probs: list[list[float]] | None = None
    context_logits: torch.Tensor | None = None  # [prompt_len, vocab]
    generation_logits: torch.Tensor | None = None  # [beam, tokens, vocab]
    sequence_index: int = 0
    is_sequence_final: bool = False
    decoding_iter: int = 0
    request_perf_metrics: RequestPerfMetrics | None = None


@dataclass(slots=True)
class Response:
    request_id: int
    result: Result | None = None
    error_msg: str | None = None
    client_id: int | None = None

    def has_error(self) -> bool:
        return self.error_msg is not None

    @property
    def is_final(self) -> bool:
        return self.error_msg is not None or (self.result is not None and self.result.is_final)
