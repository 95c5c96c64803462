"""TensorRT-LLM's executor Request and its per-request option types.

Request is llmserve.llm's Request plus the fields TensorRT-LLM's has. unsupported() names
the first field a request sets that llmserve's executor cannot serve (the request then
gets an error response); ineffective() names the set fields that only tune TensorRT-LLM
and leave the output as it is (the executor warns once per field).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from llmserve import llm


class RequestType(enum.Enum):
    REQUEST_TYPE_CONTEXT_AND_GENERATION = 0
    REQUEST_TYPE_CONTEXT_ONLY = 1
    REQUEST_TYPE_GENERATION_ONLY = 2


# p-tuning: llmserve.llm's (embedding_table, input_token_extra_ids), as TensorRT-LLM's
PromptTuningConfig = llm.PromptTuningConfig


@dataclass(slots=True)
class MropeConfig:
    mrope_rotary_cos_sin: object = None
    mrope_position_deltas: object = None


class GuideType(enum.Enum):
    JSON = 0
    JSON_SCHEMA = 1
    REGEX = 2
    EBNF_GRAMMAR = 3
    STRUCTURAL_TAG = 4


@dataclass(slots=True)
class GuidedDecodingParams:
    GuideType = GuideType  # trtllm.GuidedDecodingParams.GuideType.JSON, ...

    guide_type: GuideType = GuideType.JSON
    guide: str | None = None


@dataclass(slots=True)
class TokenRangeRetentionConfig:
    token_start: int = 0
    token_end: int | None = None
    priority: int = 35
    duration_ms: object = None  # datetime.timedelta


@dataclass(slots=True)
class KvCacheRetentionConfig:
    TokenRangeRetentionConfig = TokenRangeRetentionConfig

    token_range_retention_configs: list[TokenRangeRetentionConfig] = field(default_factory=list)
    decode_retention_priority: int = 35
    decode_duration_ms: object = None


@dataclass(slots=True)
class OutputConfig(llm.OutputConfig):
    return_encoder_output: bool = False
    additional_model_outputs: list | None = None


@dataclass(slots=True)
class Request(llm.Request):
    mrope_config: MropeConfig | None = None
    guided_decoding_params: GuidedDecodingParams | None = None
    lookahead_config: object = None
    kv_cache_retention_config: KvCacheRetentionConfig | None = None
    logits_post_processor_name: str | None = None
    logits_post_processor: object = None
    encoder_input_token_ids: list[int] | None = None
    encoder_input_features: object = None
    encoder_output_length: object = None
    cross_attention_mask: object = None
    skip_cross_attn_blocks: object = None
    position_ids: list[int] | None = None
    return_all_generated_tokens: bool = False
    type: RequestType = RequestType.REQUEST_TYPE_CONTEXT_AND_GENERATION
    context_phase_params: object = None
    allotted_time_ms: object = None
    language_adapter_uid: int | None = None
    multimodal_embedding: object = None

    def __post_init__(self) -> None:
        # the binding takes None for its bool and config arguments (as false / defaults)
        self.streaming = bool(self.streaming)
        self.return_all_generated_tokens = bool(self.return_all_generated_tokens)
        if self.sampling_config is None:
            self.sampling_config = llm.SamplingConfig()
        if self.output_config is None:
            self.output_config = OutputConfig()


_ENCODER_FIELDS = ("encoder_input_token_ids", "encoder_input_features", "encoder_output_length",
                   "cross_attention_mask", "skip_cross_attn_blocks", "multimodal_embedding")


def unsupported(request: llm.Request) -> str | None:
    """Why llmserve's executor cannot serve request (None: it can)."""
    get = lambda name: getattr(request, name, None)  # noqa: E731 (plain llm requests lack them)
    if get("mrope_config") is not None:
        return "multimodal rotary embeddings (mrope_config) are not supported by llmserve's executor"
    for name in _ENCODER_FIELDS:
        if get(name) is not None:
            return (f"{name}: encoder-decoder and multimodal inputs are not supported; "
                    "llmserve's executor serves decoder-only models")
    if get("guided_decoding_params") is not None:
        return "guided decoding is not supported by llmserve's executor"
    if get("logits_post_processor_name") or get("logits_post_processor") is not None:
        return "logits post-processors are not supported by llmserve's executor"
    if get("return_all_generated_tokens"):
        return ("return_all_generated_tokens is not supported by llmserve's executor: streamed "
                "responses carry the new tokens only")
    kind = get("type")
    if kind is not None and kind is not RequestType.REQUEST_TYPE_CONTEXT_AND_GENERATION:
        return f"request type {kind.name}: disaggregated serving is not supported"
    for name in ("context_phase_params", "position_ids", "language_adapter_uid"):
        if get(name) is not None:
            return f"{name} is not supported by llmserve's executor"
    oc = request.output_config
    if getattr(oc, "return_encoder_output", False) or getattr(oc, "additional_model_outputs", None):
        return "encoder outputs and additional model outputs are not supported"
    return None


def ineffective(request: llm.Request) -> list[str]:
    """Set fields that have no effect (the request runs without them)."""
    out = []
    if getattr(request, "kv_cache_retention_config", None) is not None:
        out.append("kv_cache_retention_config (freed blocks are evicted least recently used "
                   "first, whatever their priority)")
    if getattr(request, "lookahead_config", None) is not None:
        out.append("lookahead_config (lookahead decoding is not implemented; greedy output "
                   "is the same)")
    allotted = getattr(request, "allotted_time_ms", None)
    if allotted is not None and not (isinstance(allotted, float) and math.isinf(allotted)):
        out.append("allotted_time_ms (requests do not time out)")
    return out
