"""llmserve.llm Result -> the tensorrt_llm model's output tensors.

Each response covers one batch item (batch_index says which) and one sequence
(sequence_index); tensors get a leading batch dim of 1 when the model is batched.
"""

from __future__ import annotations

from collections.abc import Collection

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
    n = len(beams)
    width = max((len(b) for b in beams), default=0)
    metrics = result.request_perf_metrics if options.return_perf_metrics else None
    kv = metrics.kv_cache_metrics if metrics else None
    timing = metrics.timing_metrics if metrics else None
    spec = metrics.speculative_decoding if metrics else None
    log_probs = options.return_log_probs and result.cum_log_probs is not None
    # Like TensorRT-LLM's backend, every requested output exists; a feature that is off
    # gives zeros (so an ensemble that maps the output always receives it).
    build = {
        "output_ids": lambda: _pad(beams, pad_id, np.int32),
        "sequence_length": lambda: np.array([len(b) for b in beams], dtype=np.int32),
        "batch_index": lambda: np.array([options.batch_index], dtype=np.int32),
        "sequence_index": lambda: np.array([result.sequence_index], dtype=np.int32),
        "cum_log_probs": lambda: (np.array(result.cum_log_probs, dtype=np.float32) if log_probs
                                  else np.zeros(n, np.float32)),
        "output_log_probs": lambda: (
            _pad(result.log_probs or [[] for _ in beams], 0.0, np.float32) if log_probs
            else np.zeros((n, width), np.float32)),
        "context_logits": lambda: (
            _logits(result.context_logits)
            if options.return_context_logits and result.context_logits is not None
            else np.zeros((1, 1), np.float32)),
        "generation_logits": lambda: (
            _logits(result.generation_logits)
            if options.return_generation_logits and result.generation_logits is not None
            else np.zeros((n, 1, 1), np.float32)),
        "kv_cache_alloc_new_blocks": lambda: np.array(
            [kv.num_new_allocated_blocks if kv else 0], np.int32),
        "kv_cache_reused_blocks": lambda: np.array([kv.num_reused_blocks if kv else 0], np.int32),
        "kv_cache_alloc_total_blocks": lambda: np.array(
            [kv.num_total_allocated_blocks if kv else 0], np.int32),
        "arrival_time_ns": lambda: np.array([timing.arrival_time if timing else 0], np.int64),
        "first_scheduled_time_ns": lambda: np.array(
            [timing.first_scheduled_time if timing else 0], np.int64),
        "first_token_time_ns": lambda: np.array([timing.first_token_time if timing else 0], np.int64),
        "last_token_time_ns": lambda: np.array([timing.last_token_time if timing else 0], np.int64),
        "acceptance_rate": lambda: np.array([spec.acceptance_rate if spec else 0.0], np.float32),
        "total_accepted_draft_tokens": lambda: np.array(
            [spec.total_accepted_draft_tokens if spec else 0], np.int32),
        "total_draft_tokens": lambda: np.array([spec.total_draft_tokens if spec else 0], np.int32),
        "num_input_tokens": lambda: np.array(
            [options.num_input_tokens if options.return_num_input_tokens else 0], np.int32),
        "num_output_tokens": lambda: np.array(
            [num_output_tokens if options.return_num_output_tokens else 0], np.int32),
    }
    names = build if wanted is None else [name for name in build if name in wanted]
    return {name: build[name]() for name in names}


def add_batch_dim(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: value[None, ...] for name, value in tensors.items()}
