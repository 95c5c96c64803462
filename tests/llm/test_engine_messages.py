"""The engine process's wire format (llmserve/llm/engine_process/messages.py): every
message, request, config, stats and response field survives encode/decode, tensors keep
their type, dtype and shape, and errors come back with their class."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest
import torch

from llmserve.core.errors import InvalidArgument, Unavailable
from llmserve.llm import (
    ExecutorConfig,
    ExternalDraftTokensConfig,
    FinishReason,
    IterationStats,
    KvCacheMetrics,
    KvEventsConfig,
    LoraConfig,
    ModelType,
    OutputConfig,
    PeftCacheConfig,
    Request,
    RequestPerfMetrics,
    RequestStage,
    RequestStats,
    RequestStatsPerIteration,
    Response,
    Result,
    SamplingConfig,
    SpeculativeDecodingConfig,
    SpeculativeDecodingMode,
    TimingMetrics,
)
from llmserve.llm.engine_process import messages as m


def same(a, b) -> bool:
    """Equality that compares tensors by type, dtype, shape and values."""
    if isinstance(a, torch.Tensor):
        return (isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
                and torch.equal(a, b))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if hasattr(a, "__dataclass_fields__"):
        return type(a) is type(b) and all(same(getattr(a, f.name), getattr(b, f.name))
                                          for f in fields(a))
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(same, a, b))
    return a == b and type(a) is type(b)


def full_result() -> Result:
    return Result(
        is_final=True, output_token_ids=[[5, 6], [7]],
        finish_reasons=[FinishReason.END_ID, FinishReason.CANCELLED],
        cum_log_probs=[-1.5, -2.0], log_probs=[[-0.5, -1.0], [-2.0]],
        context_logits=torch.randn(3, 8),
        generation_logits=torch.randn(1, 2, 8).to(torch.bfloat16),
        sequence_index=1, is_sequence_final=True, decoding_iter=4,
        request_perf_metrics=RequestPerfMetrics(
            TimingMetrics(1, 2, 3, 4), KvCacheMetrics(2, 1, 1, 0, 0.5), first_iter=3,
            last_iter=9))


def test_every_result_field_is_set_here_and_survives():
    result = full_result()
    defaults = Result(False, [], [])
    unset = [f.name for f in fields(Result)
             if same(getattr(result, f.name), getattr(defaults, f.name))]
    assert unset == [], f"set these Result fields in full_result(): {unset}"
    streamed = Result(False, [[9]], [FinishReason.NOT_FINISHED], decoding_iter=1)
    responses = [Response(3, result, None, 11), Response(4, streamed), Response(5, None, "boom")]
    back = m.decode(m.encode(m.StepOutputs(responses)))
    assert isinstance(back, m.StepOutputs) and same(back.responses, responses)
    assert back.responses[2].has_error() and back.responses[0].is_final


def test_requests_configs_and_stats_survive():
    request = Request(
        np.array([1, 2, 3], np.int32), 8, streaming=True,
        sampling_config=SamplingConfig(beam_width=2, top_k=4, seed=9, num_return_sequences=2),
        output_config=OutputConfig(return_log_probs=True, exclude_input_from_output=True),
        end_id=2, pad_id=0, bad_words=[[4, 5]], stop_words=[[6]],
        embedding_bias=torch.zeros(16), lora_config=LoraConfig(
            3, torch.randn(4, 10), torch.tensor([[1, 0, 2]], dtype=torch.int32)),
        external_draft_tokens_config=ExternalDraftTokensConfig([1, 2], torch.randn(2, 16), 0.5),
        client_id=77, priority=0.9)
    config = ExecutorConfig(max_beam_width=2, lora_config=PeftCacheConfig(max_adapter_size=8),
                            speculative_decoding_config=SpeculativeDecodingConfig(
                                mode=SpeculativeDecodingMode.PROMPT_LOOKUP),
                            kv_events_config=KvEventsConfig(True, topic="kv"),
                            weight_only_precision="int8")
    stats = [IterationStats(timestamp="t", iter=3, num_tokens=7),
             RequestStatsPerIteration(3, [RequestStats(1, RequestStage.QUEUED, scheduled=True)])]
    for message in (m.EnqueueRequests(1, [request]), m.Init("/x", ModelType.DECODER_ONLY, config),
                    m.Reply(2, stats), m.Shutdown(4, True, 1.5), m.CancelRequest(8)):
        assert same(m.decode(m.encode(message)), message), type(message).__name__
    assert m.decode(m.encode(request)).sampling_config.random_seed == 9


def test_errors_come_back_with_their_class():
    for exc in (InvalidArgument("bad"), Unavailable("Maximum queue size of 2 has been reached"),
                ValueError("v")):
        again = m.to_exception(m.decode(m.encode(m.wire_error(exc))))
        assert type(again) is type(exc) and str(again) == str(exc)
    odd = m.to_exception(m.wire_error(OSError("no such file")))
    assert str(odd) == "OSError: no such file"
    with pytest.raises(TypeError, match="cannot travel"):
        m.encode(object())
