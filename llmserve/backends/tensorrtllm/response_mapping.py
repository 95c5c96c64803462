"""llmserve.llm Result -> the tensorrt_llm model's output tensors.

Each response covers one batch item (batch_index says which) and one sequence
(sequence_index); tensors get a leading batch dim of 1 when the model is batched.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import numpy as np

from llmserve.backends.tensorrtllm.request_mapping import ItemOptions
from llmserve.llm.request import Result


def _pad(rows: list[list], fill, dtype) -> np.ndarray:
    width = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), width), fill, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def _logits(value) -> np.ndarray:
    return value.detach().to("cpu").float().numpy()


class _Step:
    """What the output builders read of one result (computed once per response)."""

    __slots__ = ("result", "options", "beams", "n", "width", "log_probs", "kv", "timing",
                 "spec", "pad_id", "num_output_tokens")

    def __init__(self, result: Result, options: ItemOptions, beams: list[list[int]],
                 pad_id: int, num_output_tokens: int) -> None:
        self.result, self.options, self.beams = result, options, beams
        self.n = len(beams)
        self.width = max((len(b) for b in beams), default=0)
        metrics = result.request_perf_metrics if options.return_perf_metrics else None
        self.kv = metrics.kv_cache_metrics if metrics else None
        self.timing = metrics.timing_metrics if metrics else None
        self.spec = metrics.speculative_decoding if metrics else None
        self.log_probs = options.return_log_probs and result.cum_log_probs is not None
        self.pad_id, self.num_output_tokens = pad_id, num_output_tokens


def _scalar(value, dtype) -> np.ndarray:
    return np.array([value], dtype)


# Like TensorRT-LLM's backend, every requested output exists; a feature that is off gives
# zeros (so an ensemble that maps the output always receives it). Built once, not per
# response: a streamed token builds only the outputs its request asked for.
_BUILD: dict[str, Callable[[_Step], np.ndarray]] = {
    "output_ids": lambda s: _pad(s.beams, s.pad_id, np.int32),
    "sequence_length": lambda s: np.array([len(b) for b in s.beams], dtype=np.int32),
    "batch_index": lambda s: _scalar(s.options.batch_index, np.int32),
    "sequence_index": lambda s: _scalar(s.result.sequence_index, np.int32),
    "cum_log_probs": lambda s: (np.array(s.result.cum_log_probs, dtype=np.float32)
                                if s.log_probs else np.zeros(s.n, np.float32)),
    "output_log_probs": lambda s: (
        _pad(s.result.log_probs or [[] for _ in s.beams], 0.0, np.float32) if s.log_probs
        else np.zeros((s.n, s.width), np.float32)),
    "context_logits": lambda s: (
        _logits(s.result.context_logits)
        if s.options.return_context_logits and s.result.context_logits is not None
        else np.zeros((1, 1), np.float32)),
    "generation_logits": lambda s: (
        _logits(s.result.generation_logits)
        if s.options.return_generation_logits and s.result.generation_logits is not None
        else np.zeros((s.n, 1, 1), np.float32)),
    "kv_cache_alloc_new_blocks": lambda s: _scalar(
        s.kv.num_new_allocated_blocks if s.kv else 0, np.int32),
    "kv_cache_reused_blocks": lambda s: _scalar(s.kv.num_reused_blocks if s.kv else 0, np.int32),
    "kv_cache_alloc_total_blocks": lambda s: _scalar(
        s.kv.num_total_allocated_blocks if s.kv else 0, np.int32),
    "arrival_time_ns": lambda s: _scalar(s.timing.arrival_time if s.timing else 0, np.int64),
    "first_scheduled_time_ns": lambda s: _scalar(
        s.timing.first_scheduled_time if s.timing else 0, np.int64),
    "first_token_time_ns": lambda s: _scalar(
        s.timing.first_token_time if s.timing else 0, np.int64),
    "last_token_time_ns": lambda s: _scalar(s.timing.last_token_time if s.timing else 0, np.int64),
    "acceptance_rate": lambda s: _scalar(s.spec.acceptance_rate if s.spec else 0.0, np.float32),
    "total_accepted_draft_tokens": lambda s: _scalar(
        s.spec.total_accepted_draft_tokens if s.spec else 0, np.int32),
    "total_draft_tokens": lambda s: _scalar(s.spec.total_draft_tokens if s.spec else 0, np.int32),
    "num_input_tokens": lambda s: _scalar(
        s.options.num_input_tokens if s.options.return_num_input_tokens else 0, np.int32),
    "num_output_tokens": lambda s: _scalar(
        s.num_output_tokens if s.options.return_num_output_tokens else 0, np.int32),
}


def result_tensors(
    result: Result,
    options: ItemOptions,
    *,
    wanted: Collection[str] | None = None,
    output_ids: list[list[int]] | None = None,
    pad_id: int = 0,
    num_output_tokens: int = 0,
) -> dict[str, np.ndarray]:
    """Output tensors without the batch dim, only those in `wanted` (None: all).
    output_ids overrides result.output_token_ids (the backend passes the tokens it
    releases after UTF-8 hold-back); num_output_tokens is the sequence's generated-token
    count so far."""
    beams = result.output_token_ids if output_ids is None else output_ids
    step = _Step(result, options, beams, pad_id, num_output_tokens)
    names = _BUILD if wanted is None else [name for name in _BUILD if name in wanted]
    return {name: _BUILD[name](step) for name in names}


def add_batch_dim(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: value[None, ...] for name, value in tensors.items()}
