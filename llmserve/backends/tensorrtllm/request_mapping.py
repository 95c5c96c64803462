"""Triton request tensors of the tensorrt_llm model -> llmserve.llm.Request.

One Triton request may carry a batch; `split_batch` cuts it into per-item tensor dicts
and `build_request` turns one item into an executor Request. Both old and new tensor
names are accepted (min_length/min_tokens, random_seed/seed, return_kv_cache_reuse_stats/
return_perf_metrics).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from llmserve.core.errors import InvalidArgument, Unsupported
from llmserve.llm.request import (
    ExternalDraftTokensConfig,
    GuidedDecodingParams,
    LoraConfig,
    OutputConfig,
    PromptTuningConfig,
    Request,
    SamplingConfig,
)

STREAMING_NEEDS_DECOUPLED = "Streaming is only supported if model is deployed using decoupled mode"
BATCH_NEEDS_DECOUPLED = (
    "Triton non-decoupled mode only supports batch size 1; deploy with decoupled mode "
    "to send requests with batch size > 1"
)

# Inputs that need an engine feature llmserve does not have.
_UNSUPPORTED_INPUTS = {
    "encoder_input_features": "encoder-decoder models are not supported",
    "encoder_output_lengths": "encoder-decoder models are not supported",
}

# Every input build_request and the speculative path read; with the unsupported ones
# above and the encoder-decoder inputs that a decoder-only model ignores (the stock
# ensemble sends them for every model, as TensorRT-LLM ignores them too).
HANDLED_INPUTS = frozenset({
    "input_ids", "input_lengths", "request_output_len", "draft_input_ids", "draft_logits",
    "draft_acceptance_threshold", "end_id", "pad_id", "stop_words_list", "bad_words_list",
    "embedding_bias", "beam_width", "temperature", "runtime_top_k", "runtime_top_p",
    "runtime_top_p_min", "runtime_top_p_decay", "runtime_top_p_reset_ids", "len_penalty",
    "early_stopping", "repetition_penalty", "min_length", "min_tokens",
    "beam_search_diversity_rate", "presence_penalty", "frequency_penalty",
    "no_repeat_ngram_size", "random_seed", "seed", "return_log_probs",
    "return_context_logits", "return_generation_logits", "return_kv_cache_reuse_stats",
    "return_perf_metrics", "return_num_input_tokens", "return_num_output_tokens",
    "exclude_input_in_output", "streaming", "stop", "num_return_sequences", "lora_task_id",
    "lora_weights", "lora_config", "prompt_embedding_table", "prompt_table_extra_ids",
    "guided_decoding_guide_type", "guided_decoding_guide",
    # read by nothing, as in TensorRT-LLM's executor: the table's rows say its size
    "prompt_vocab_size",
})
IGNORED_INPUTS = frozenset({"decoder_input_ids", "decoder_input_lengths"})


def unused_config_inputs(names) -> list[str]:
    """Inputs a config declares that llmserve's tensorrt_llm neither reads nor rejects:
    requests may send them, and they have no effect (warned about at load)."""
    known = HANDLED_INPUTS | IGNORED_INPUTS | set(_UNSUPPORTED_INPUTS)
    return sorted(set(names) - known)


@dataclass(slots=True)
class ItemOptions:
    """What the backend must remember per batch item beyond the executor Request."""

    batch_index: int
    return_log_probs: bool = False
    return_context_logits: bool = False
    return_generation_logits: bool = False
    return_perf_metrics: bool = False
    return_num_input_tokens: bool = False
    return_num_output_tokens: bool = False
    num_input_tokens: int = 0
    beam_width: int = 1  # > 1: streaming results carry whole beams, not deltas


def split_batch(inputs: dict[str, np.ndarray], batched: bool) -> list[dict[str, np.ndarray]]:
    """Per-item views of the inputs; `batched` (max_batch_size > 0): first dim is batch."""
    if not batched:
        return [dict(inputs)]
    lengths = inputs.get("input_lengths")
    if lengths is None:
        raise InvalidArgument("input 'input_lengths' is required")
    batch = int(np.asarray(lengths).shape[0])
    items: list[dict[str, np.ndarray]] = [{} for _ in range(batch)]
    for name, value in inputs.items():
        arr = np.asarray(value)
        if arr.ndim == 0 or arr.shape[0] != batch:
            raise InvalidArgument(
                f"input '{name}' has batch size {arr.shape[0] if arr.ndim else 0}, "
                f"expected {batch}"
            )
        for i in range(batch):
            items[i][name] = arr[i]
    return items


def _scalar(item: dict[str, np.ndarray], *names: str):
    for name in names:
        value = item.get(name)
        if value is not None and np.asarray(value).size > 0:
            return np.asarray(value).reshape(-1)[0].item()
    return None


def _flag(item: dict[str, np.ndarray], *names: str, default: bool = False) -> bool:
    value = _scalar(item, *names)
    return default if value is None else bool(value)


def words_from_tensor(value: np.ndarray | None, name: str) -> list[list[int]] | None:
    """[2, L] (row 0 ids, row 1 cumulative end offsets padded with -1) -> list of words."""
    if value is None:
        return None
    arr = np.asarray(value)
    if arr.size == 0:
        return None
    if arr.ndim != 2 or arr.shape[0] != 2:
        raise InvalidArgument(f"input '{name}' must have shape [2, L], got {list(arr.shape)}")
    ids, offsets = arr[0].tolist(), arr[1].tolist()
    words, start = [], 0
    for end in offsets:
        if end < 0:
            break
        if end < start or end > len(ids):
            raise InvalidArgument(f"input '{name}' has an invalid offset {end}")
        if end > start:
            words.append([int(t) for t in ids[start:end]])
        start = end
    return words or None


def _sampling(item: dict[str, np.ndarray], decoding_mode: str | None) -> SamplingConfig:
    top_k = _scalar(item, "runtime_top_k")
    top_p = _scalar(item, "runtime_top_p")
    if decoding_mode == "top_k":
        top_p = None
    elif decoding_mode == "top_p":
        top_k = None
    early = _scalar(item, "early_stopping")
    beam_width = _scalar(item, "beam_width")  # absent: 1; 0 is refused, as TensorRT-LLM does
    config = SamplingConfig(
        beam_width=1 if beam_width is None else int(beam_width),
        top_k=top_k,
        top_p=top_p,
        top_p_min=_scalar(item, "runtime_top_p_min"),
        top_p_reset_ids=_scalar(item, "runtime_top_p_reset_ids"),
        top_p_decay=_scalar(item, "runtime_top_p_decay"),
        seed=_scalar(item, "seed", "random_seed"),
        temperature=_scalar(item, "temperature"),
        min_tokens=_scalar(item, "min_tokens", "min_length"),
        beam_search_diversity_rate=_scalar(item, "beam_search_diversity_rate"),
        repetition_penalty=_scalar(item, "repetition_penalty"),
        presence_penalty=_scalar(item, "presence_penalty"),
        frequency_penalty=_scalar(item, "frequency_penalty"),
        length_penalty=_scalar(item, "len_penalty"),
        early_stopping=None if early is None else int(early),
        no_repeat_ngram_size=_scalar(item, "no_repeat_ngram_size"),
        num_return_sequences=_scalar(item, "num_return_sequences"),
    )
    config.validate()
    return config


def _draft(item: dict[str, np.ndarray], fast_logits: bool) -> ExternalDraftTokensConfig | None:
    tokens = item.get("draft_input_ids")
    if tokens is None or np.asarray(tokens).size == 0:
        return None
    logits = item.get("draft_logits")
    return ExternalDraftTokensConfig(
        tokens=[int(t) for t in np.asarray(tokens).reshape(-1)],
        logits=None if logits is None else torch.from_numpy(np.array(logits, np.float32)),
        acceptance_threshold=_scalar(item, "draft_acceptance_threshold"),
        fast_logits=fast_logits,
    )


def _lora(item: dict[str, np.ndarray]) -> LoraConfig | None:
    task = _scalar(item, "lora_task_id")
    # empty tensors (a BLS or client filling every input) count as absent
    weights, config = (t if t is not None and np.asarray(t).size else None
                       for t in (item.get("lora_weights"), item.get("lora_config")))
    if task is None:
        if weights is not None or config is not None:
            raise InvalidArgument("lora_weights and lora_config need a lora_task_id")
        return None
    return LoraConfig(
        task_id=int(task),
        weights=None if weights is None else torch.from_numpy(np.array(weights, np.float32)),
        config=None if config is None else torch.from_numpy(np.array(config, np.int32)),
    )


def _text(item: dict[str, np.ndarray], name: str) -> str | None:
    value = item.get(name)
    if value is None or np.asarray(value).size == 0:
        return None
    first = np.asarray(value).reshape(-1)[0]
    text = first.decode("utf-8") if isinstance(first, bytes) else str(first)
    return text if text.strip() else None  # an empty string (a client filling every
    # input) counts as absent


def guided_params(item: dict[str, np.ndarray]) -> GuidedDecodingParams | None:
    """guided_decoding_guide_type ("json", "json_schema", "regex", "ebnf_grammar",
    "structural_tag") and guided_decoding_guide, as TensorRT-LLM reads them."""
    kind, guide = _text(item, "guided_decoding_guide_type"), _text(item, "guided_decoding_guide")
    if kind is None:
        if guide is not None:
            raise InvalidArgument("input 'guided_decoding_guide' needs "
                                  "'guided_decoding_guide_type'")
        return None
    return GuidedDecodingParams(kind, guide)


def _prompt_tuning(item: dict[str, np.ndarray], input_length: int) -> PromptTuningConfig | None:
    """prompt_embedding_table [rows, hidden] (a leading 1 dropped) and, with it, the
    first input_length prompt_table_extra_ids (ignored without a table, as upstream)."""
    table = item.get("prompt_embedding_table")
    if table is None or np.asarray(table).size == 0:
        return None
    arr = np.asarray(table)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.dtype.kind != "f":
        raise InvalidArgument("prompt_embedding_table must be a floating-point tensor")
    extra = item.get("prompt_table_extra_ids")
    ids = None
    if extra is not None and np.asarray(extra).size > 0:
        ids = [int(t) for t in np.asarray(extra).reshape(-1)[:input_length]]
    return PromptTuningConfig(torch.from_numpy(np.array(arr)), ids)


def build_request(
    item: dict[str, np.ndarray],
    batch_index: int,
    *,
    decoupled: bool,
    default_exclude_input: bool,
    decoding_mode: str | None = None,
    fast_logits: bool = False,
) -> tuple[Request, ItemOptions]:
    """One batch item -> (executor Request, what the response mapping needs)."""
    for name, why in _UNSUPPORTED_INPUTS.items():
        value = item.get(name)
        if value is not None and np.asarray(value).size > 0:
            raise Unsupported(f"input '{name}': {why}")
    streaming = _flag(item, "streaming")
    if streaming and not decoupled:
        raise InvalidArgument(STREAMING_NEEDS_DECOUPLED)
    ids = item.get("input_ids")
    if ids is None:
        raise InvalidArgument("input 'input_ids' is required for decoder-only models")
    ids = np.asarray(ids).reshape(-1)
    length = _scalar(item, "input_lengths")
    if length is not None:
        if not 0 < int(length) <= ids.shape[0]:
            raise InvalidArgument(
                f"input_lengths {length} does not fit input_ids of length {ids.shape[0]}"
            )
        ids = ids[: int(length)]
    if ids.size == 0:
        raise InvalidArgument("input_ids is empty")
    max_tokens = _scalar(item, "request_output_len")
    if max_tokens is None:
        raise InvalidArgument("input 'request_output_len' is required")
    bias = item.get("embedding_bias")
    bias_t = None
    if bias is not None and np.asarray(bias).size > 0:
        bias_t = torch.from_numpy(np.array(bias, np.float32).reshape(-1))
    exclude = _flag(item, "exclude_input_in_output", default=default_exclude_input)
    options = ItemOptions(
        batch_index=batch_index,
        return_log_probs=_flag(item, "return_log_probs"),
        return_context_logits=_flag(item, "return_context_logits"),
        return_generation_logits=_flag(item, "return_generation_logits"),
        return_perf_metrics=_flag(item, "return_perf_metrics", "return_kv_cache_reuse_stats"),
        return_num_input_tokens=_flag(item, "return_num_input_tokens"),
        return_num_output_tokens=_flag(item, "return_num_output_tokens"),
        num_input_tokens=int(ids.size),
    )
    end_id, pad_id = _scalar(item, "end_id"), _scalar(item, "pad_id")
    request = Request(
        input_token_ids=[int(t) for t in ids],
        max_tokens=int(max_tokens),
        streaming=streaming,
        sampling_config=_sampling(item, decoding_mode),
        output_config=OutputConfig(
            return_log_probs=options.return_log_probs,
            return_context_logits=options.return_context_logits,
            return_generation_logits=options.return_generation_logits,
            exclude_input_from_output=exclude,
            return_perf_metrics=options.return_perf_metrics,
        ),
        end_id=None if end_id is None else int(end_id),
        pad_id=None if pad_id is None else int(pad_id),
        bad_words=words_from_tensor(item.get("bad_words_list"), "bad_words_list"),
        stop_words=words_from_tensor(item.get("stop_words_list"), "stop_words_list"),
        embedding_bias=bias_t,
        external_draft_tokens_config=_draft(item, fast_logits),
        lora_config=_lora(item),
        prompt_tuning_config=_prompt_tuning(item, int(ids.size)),
        guided_decoding_params=guided_params(item),
    )
    options.beam_width = request.sampling_config.beam_width
    return request, options
