"""The tensorrt_llm stand-in's Executor on a tiny checkpoint: load-time warnings for what
it cannot honour, error responses (not exceptions) for requests it cannot serve, the
decoding mode's sampling rules, and responses / stats shaped as TensorRT-LLM's."""

from __future__ import annotations

import datetime
import json
import logging
import re

import pandas as pd
import pytest
import torch
from llm_fixtures import make_tiny_checkpoint

from llmserve.compat.tensorrt_llm.bindings import executor as trtllm
from llmserve.core.errors import InvalidArgument, Unsupported

WAIT = datetime.timedelta(seconds=60)
PROMPT = [5, 17, 42, 9, 33]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("compat_ckpt"))


@pytest.fixture(scope="module")
def runner(ckpt):
    from llmserve.llm.engine import ModelRunner

    return ModelRunner(ckpt)


@pytest.fixture
def make(runner):
    made = []

    def build(**kw) -> trtllm.Executor:
        kw.setdefault("kv_cache_config", trtllm.KvCacheConfig(max_tokens=1024))
        kw.setdefault("tokens_per_block", 8)
        ex = trtllm.Executor(None, trtllm.ModelType.DECODER_ONLY, trtllm.ExecutorConfig(**kw),
                             runner=runner)
        made.append(ex)
        return ex

    yield build
    for ex in made:
        ex.shutdown()


def finish(ex: trtllm.Executor, ids: list[int]) -> dict[int, list]:
    """Every response of ids, until each has its final one."""
    out: dict[int, list] = {i: [] for i in ids}
    pending = set(ids)
    while pending:
        for r in ex.await_responses(timeout=WAIT):
            out[r.request_id].append(r)
            if r.is_final:
                pending.discard(r.request_id)
    return out


def request(max_tokens: int = 4, **kw) -> trtllm.Request:
    kw.setdefault("output_config", trtllm.OutputConfig(exclude_input_from_output=True))
    return trtllm.Request(input_token_ids=list(PROMPT), max_tokens=max_tokens, **kw)


# -- load ---------------------------------------------------------------------------------
def test_settings_it_cannot_honour_warn_once_at_load(make, ckpt, caplog):
    from transformers import AutoTokenizer

    from llmserve.compat.tensorrt_llm.llmapi.tokenizer import _xgrammar_tokenizer_info

    orchestrator = trtllm.ParallelConfig(
        communication_mode=trtllm.CommunicationMode.ORCHESTRATOR,
        orchestrator_config=trtllm.OrchestratorConfig(True, "/opt/worker"))
    with caplog.at_level(logging.WARNING, logger="llmserve.compat.tensorrt_llm"):
        ex = make(parallel_config=orchestrator,
                  extended_runtime_perf_knob_config=trtllm.ExtendedRuntimePerfKnobConfig(
                      cuda_graph_mode=True, cuda_graph_cache_size=4),
                  guided_decoding_config=trtllm.GuidedDecodingConfig(
                      trtllm.GuidedDecodingConfig.GuidedDecodingBackend.LLGUIDANCE,
                      **_xgrammar_tokenizer_info(AutoTokenizer.from_pretrained(str(ckpt)))),
                  decoding_config=trtllm.DecodingConfig(
                      decoding_mode=trtllm.DecodingMode.Lookahead(),
                      lookahead_decoding_config=trtllm.LookaheadDecodingConfig(4, 3, 4)),
                  kv_cache_config=trtllm.KvCacheConfig(max_tokens=1024, onboard_blocks=False))
    text = " | ".join(ex.warnings)
    for needle in ("orchestrator mode", "cuda_graph_mode=True", "cuda_graph_cache_size=4",
                   "backend LLGUIDANCE", "lookahead decoding", "onboard_blocks=False"):
        assert needle in text
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == len(ex.warnings) == len(set(ex.warnings))
    assert make().warnings == []  # TensorRT-LLM's defaults need no warning


def test_head_decoding_modes_and_engine_folders_are_refused(runner, ckpt, tmp_path):
    config = trtllm.ExecutorConfig(decoding_config=trtllm.DecodingConfig(
        decoding_mode=trtllm.DecodingMode.Medusa()))
    with pytest.raises(Unsupported, match="Medusa heads"):
        trtllm.Executor(None, trtllm.ModelType.DECODER_ONLY, config, runner=runner)
    engine = tmp_path / "engine"
    engine.mkdir()
    (engine / "config.json").write_text(json.dumps({"build_config": {}}))
    (engine / "rank0.engine").write_bytes(b"")
    with pytest.raises(InvalidArgument, match="TensorRT-LLM engine.*Hugging Face checkpoint"):
        trtllm.Executor(str(engine), trtllm.ModelType.DECODER_ONLY, trtllm.ExecutorConfig())
    with pytest.raises(InvalidArgument, match="not set"):
        trtllm.Executor(None, trtllm.ModelType.DECODER_ONLY, trtllm.ExecutorConfig())


# -- requests -----------------------------------------------------------------------------
def test_requests_it_cannot_serve_get_error_responses(make):
    ex = make(max_beam_width=1)
    bad = [
        request(encoder_input_token_ids=[1, 2]),
        request(mrope_config=trtllm.MropeConfig(torch.zeros(2, 64))),
        request(sampling_config=trtllm.SamplingConfig(beam_width=2)),  # > max_beam_width
    ]
    ids = ex.enqueue_requests([bad[0], request(), bad[1], bad[2]])
    assert len(set(ids)) == 4
    out = finish(ex, ids)
    errors = [out[i][0].error_msg for i in (ids[0], ids[2], ids[3])]
    assert "encoder-decoder" in errors[0] and "mrope_config" in errors[1]
    assert "max_beam_width" in errors[2]
    assert len(out[ids[1]][-1].result.output_token_ids[0]) == 4  # its neighbours unharmed
    ex.cancel_request(ids[0])  # an answered request: nothing to cancel, no error


def test_guided_decoding_params_are_served(make, ckpt):
    """As the stock model configures it: GuidedDecodingConfig from
    _xgrammar_tokenizer_info, GuidedDecodingParams per request."""
    from transformers import AutoTokenizer

    from llmserve.compat.tensorrt_llm.llmapi.tokenizer import _xgrammar_tokenizer_info

    tok = AutoTokenizer.from_pretrained(str(ckpt))
    ex = make(guided_decoding_config=trtllm.GuidedDecodingConfig(
        backend=trtllm.GuidedDecodingConfig.GuidedDecodingBackend.XGRAMMAR,
        **_xgrammar_tokenizer_info(tok)))
    guide = trtllm.GuidedDecodingParams(guide_type=trtllm.GuidedDecodingParams.GuideType.REGEX,
                                        guide="[a-c]{3}-[0-9]{2}")
    (rid,) = ex.enqueue_requests([request(20, guided_decoding_params=guide, end_id=2)])
    tokens = [t for r in finish(ex, [rid])[rid] for t in r.result.output_token_ids[0]]
    assert re.fullmatch("[a-c]{3}-[0-9]{2}", tok.decode(tokens)), tok.decode(tokens)


def test_prompt_tuning_table_rows_stand_for_fake_ids(make, runner):
    """ids past the vocabulary embed as rows of the request's table: a table holding the
    embeddings of PROMPT's first three tokens gives PROMPT's output."""
    vocab = runner.arch.vocab_size
    table = runner.model.embed[PROMPT[:3]].clone()
    tuned = trtllm.Request(input_token_ids=[vocab, vocab + 1, vocab + 2] + PROMPT[3:],
                           max_tokens=4, prompt_tuning_config=trtllm.PromptTuningConfig(
                               table, input_token_extra_ids=[1, 1, 1, 0, 0]),
                           output_config=trtllm.OutputConfig(exclude_input_from_output=True))
    ex = make(kv_cache_config=trtllm.KvCacheConfig(max_tokens=1024, enable_block_reuse=True))
    ids = ex.enqueue_requests([tuned, request()])
    out = finish(ex, ids)
    tokens = [out[i][-1].result.output_token_ids[0] for i in ids]
    assert tokens[0] == tokens[1] and len(tokens[0]) == 4


def test_decoding_mode_restricts_sampling(make):
    sampling = trtllm.SamplingConfig(top_k=5, top_p=0.5)
    req = request(sampling_config=sampling)
    top_k = make(decoding_config=trtllm.DecodingConfig(decoding_mode=trtllm.DecodingMode.TopK()))
    assert top_k._prepared(req).sampling_config.top_p is None
    top_p = make(decoding_config=trtllm.DecodingConfig(decoding_mode=trtllm.DecodingMode.TopP()))
    assert top_p._prepared(req).sampling_config.top_k is None
    assert req.sampling_config.top_k == 5 and req.sampling_config.top_p == 0.5  # caller's kept


def test_cancel_request_ends_it_early(make):
    ex = make()
    rid = ex.enqueue_request(request(max_tokens=200, streaming=True))
    first = ex.await_responses(rid, WAIT)
    ex.cancel_request(rid)
    rest = finish(ex, [rid])[rid]
    final = rest[-1].result
    assert final.is_final and final.finish_reasons == [trtllm.FinishReason.CANCELLED]
    assert sum(len(r.result.output_token_ids[0]) for r in first + rest) < 200


# -- responses ----------------------------------------------------------------------------
def test_perf_metrics_are_timedeltas_and_logits_float32(make):
    ex = make()
    oc = trtllm.OutputConfig(return_perf_metrics=True, return_context_logits=True,
                             return_generation_logits=True, exclude_input_from_output=True)
    rid = ex.enqueue_request(request(max_tokens=3, output_config=oc))
    result = finish(ex, [rid])[rid][-1].result
    timing = result.request_perf_metrics.timing_metrics
    assert isinstance(timing.arrival_time, datetime.timedelta)
    assert 0 < pd.Timedelta(timing.arrival_time).value <= pd.Timedelta(timing.last_token_time).value
    assert result.context_logits.dtype is torch.float32 and result.context_logits.device.type == "cpu"
    assert tuple(result.context_logits.shape[:1]) == (len(PROMPT),)
    assert tuple(result.generation_logits.shape[:2]) == (1, 3)  # [beams, tokens, vocab]

    rid = ex.enqueue_request(request(max_tokens=3, output_config=oc, streaming=True))
    for r in finish(ex, [rid])[rid]:
        assert r.result.generation_logits.shape[1] == 1  # streamed: [tokens, beams, vocab]


def test_beam_log_probs_are_one_row_per_beam(make):
    ex = make(max_beam_width=2)
    sc = trtllm.SamplingConfig(beam_width=2, num_return_sequences=2)
    oc = trtllm.OutputConfig(return_log_probs=True, exclude_input_from_output=True)
    rid = ex.enqueue_request(request(max_tokens=6, sampling_config=sc, output_config=oc,
                                     end_id=2))
    result = finish(ex, [rid])[rid][-1].result
    assert len(result.output_token_ids) == 2 and len(result.cum_log_probs) == 2
    assert len({len(row) for row in result.log_probs}) == 1  # one array, as the stock model needs


# -- stats --------------------------------------------------------------------------------
def test_iteration_and_request_stats(make):
    ex = make(request_stats_max_iterations=10)
    finish(ex, [ex.enqueue_request(request())])
    stats = ex.get_latest_iteration_stats()
    assert stats and stats[-1].cpu_mem_usage > 0 and stats[-1].static_batching_stats is None
    doc = json.loads(stats[-1].to_json_str())
    assert doc["kvCacheStats"]["maxNumBlocks"] == 1024 // 8
    assert {"iterLatencyMS", "numActiveRequests", "cpuMemUsage", "inflightBatchingStats",
            "staticBatchingStats"} <= set(doc)
    per_request = ex.get_latest_request_stats()
    assert "requestStats" in json.loads(per_request[-1].to_json_str())

    static = make(batching_type=trtllm.BatchingType.STATIC)
    finish(static, [static.enqueue_request(request())])
    steps = static.get_latest_iteration_stats()
    assert all(s.inflight_batching_stats is None for s in steps)
    assert max(s.static_batching_stats.num_scheduled_requests for s in steps) == 1


def test_device_ids_name_the_tensor_parallel_ranks_on_cuda(monkeypatch):
    from llmserve.compat import trtllm_config as tc

    config = trtllm.ExecutorConfig(parallel_config=trtllm.ParallelConfig(device_ids=[2, 3]))
    monkeypatch.setattr(tc, "_cuda", lambda: True)
    served = tc.to_llmserve(config)
    assert (served.device, served.tensor_parallel_size, served.device_ids) == ("cuda:2", 2, [2, 3])
    assert not any("device_ids" in w for w in tc.ignored_settings(config))
    monkeypatch.setattr(tc, "_cuda", lambda: False)  # no GPU: one CPU rank, with a warning
    served = tc.to_llmserve(config)
    assert (served.device, served.tensor_parallel_size) == (None, 1)
    assert any("CUDA is not available" in w for w in tc.ignored_settings(config))
