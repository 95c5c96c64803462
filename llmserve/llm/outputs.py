"""Building Response objects from sequence state, per OutputConfig.

Streaming responses carry only what is new since the last one (tokens, log probs,
generation logits); final-only responses carry everything, with the prompt unless
exclude_input_from_output.
"""

from __future__ import annotations

import torch

from llmserve.llm.request import (
    FinishReason,
    KvCacheMetrics,
    RequestPerfMetrics,
    Response,
    Result,
    SpeculativeDecodingMetrics,
    TimingMetrics,
)
from llmserve.llm.sequence import RequestState, Sequence


def perf_metrics(state: RequestState, seq: Sequence) -> RequestPerfMetrics:
    new = seq.num_new_blocks
    reused = seq.num_reused_blocks
    drafts = seq.num_draft_tokens
    accepted = seq.num_accepted_draft_tokens
    return RequestPerfMetrics(
        timing_metrics=TimingMetrics(
            arrival_time=state.arrival_ns,
            first_scheduled_time=state.first_scheduled_ns,
            first_token_time=state.first_token_ns,
            last_token_time=state.last_token_ns,
        ),
        kv_cache_metrics=KvCacheMetrics(
            num_total_allocated_blocks=new + reused,
            num_new_allocated_blocks=new,
            num_reused_blocks=reused,
            num_missed_blocks=seq.num_missed_blocks,
            kv_cache_hit_rate=reused / (reused + seq.num_missed_blocks)
            if reused + seq.num_missed_blocks else 0.0,
        ),
        speculative_decoding=SpeculativeDecodingMetrics(
            acceptance_rate=accepted / drafts if drafts else 0.0,
            total_accepted_draft_tokens=accepted,
            total_draft_tokens=drafts,
        ),
        first_iter=state.first_iter,
        last_iter=state.last_iter,
    )


def build_response(state: RequestState, seq: Sequence, *, is_final: bool) -> Response:
    """The next response for seq: new tokens when streaming, everything at the end."""
    req = state.request
    oc = req.output_config
    streaming = req.streaming
    start = seq.num_sent if streaming else 0
    generated = seq.output_ids
    tokens = generated[start:]
    if not streaming and not oc.exclude_input_from_output:
        tokens = seq.token_ids[: seq.prompt_len] + tokens
    seq_final = seq.is_finished
    result = Result(
        is_final=is_final,
        output_token_ids=[tokens],
        finish_reasons=[seq.finish_reason if seq_final else FinishReason.NOT_FINISHED],
        sequence_index=seq.index,
        is_sequence_final=seq_final,
        decoding_iter=seq.decoding_iter,
    )
    if oc.return_log_probs:
        result.log_probs = [seq.log_probs[start:]]
        result.cum_log_probs = [seq.cum_log_prob]
    if oc.return_context_logits and state.context_logits:
        # streaming: once, in the request's first response; otherwise in every final one
        if not streaming or not state.context_logits_sent:
            result.context_logits = torch.cat(state.context_logits).cpu()
            state.context_logits_sent = True
    if oc.return_generation_logits:
        rows = seq.generation_logits[start:]
        if rows:
            result.generation_logits = torch.stack(rows).unsqueeze(0).cpu()
    if oc.return_perf_metrics:
        result.request_perf_metrics = perf_metrics(state, seq)
    seq.num_sent = len(generated)
    return Response(state.request_id, result=result, client_id=req.client_id)


def error_response(state: RequestState, message: str) -> Response:
    return Response(state.request_id, error_msg=message, client_id=state.request.client_id)
