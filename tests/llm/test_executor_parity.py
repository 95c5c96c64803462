"""Executor on the real engine: greedy output equals transformers under inflight joins,
chunked context, block reuse and preemption; draft tokens; logits and log probs."""

from __future__ import annotations

import datetime

import pytest
import torch
from executor_helpers import (
    collect,
    greedy_request,
    hf_reference,
    prompt,
    run,
    tokens_of,
    wait_idle,
)
from llm_fixtures import hf_logits

from llmserve.llm import (
    CapacitySchedulerPolicy,
    ExternalDraftTokensConfig,
    OutputConfig,
    SchedulerConfig,
)

PROMPTS = [prompt(n, seed) for seed, n in enumerate([5, 23, 40, 9, 17])]
NEW = 12


@pytest.fixture(scope="module")
def reference(exec_hf):
    return [hf_reference(exec_hf, p, NEW) for p in PROMPTS]


def test_greedy_equals_transformers_under_inflight_joins(make_executor, reference):
    ex = make_executor()
    ids, responses = [], {}
    for p in PROMPTS:  # each request joins while the earlier ones are decoding
        ids.append(ex.enqueue_request(greedy_request(p, NEW, streaming=True)))
        first = ex.await_responses(ids[-1], datetime.timedelta(seconds=30))
        responses[ids[-1]] = first
    rest = collect(ex, [i for i in ids if not responses[i][-1].is_final])
    for i, ref in zip(ids, reference, strict=True):
        assert tokens_of(responses[i] + rest.get(i, [])) == ref
    stats = ex.get_latest_iteration_stats()
    assert max(s.inflight_batching_stats.num_scheduled_requests for s in stats) > 1
    assert any(s.inflight_batching_stats.num_context_requests
               and s.inflight_batching_stats.num_gen_requests for s in stats)


def test_chunked_context_equals_transformers(make_executor, reference):
    ex = make_executor(enable_chunked_context=True, max_num_tokens=8)
    outs = run(ex, [greedy_request(p, NEW) for p in PROMPTS])
    assert [tokens_of(o) for o in outs] == reference
    stats = ex.get_latest_iteration_stats()
    assert max(s.num_tokens for s in stats) <= 8


def test_block_reuse_on_and_off_identical(make_executor, exec_hf):
    system = prompt(35, 100)
    prompts = [system + prompt(6, 200 + i) for i in range(3)]
    reference = [hf_reference(exec_hf, p, NEW) for p in prompts]
    oc = OutputConfig(exclude_input_from_output=True, return_perf_metrics=True)
    for reuse in (False, True):
        ex = make_executor(reuse=reuse)
        outs = [run(ex, [greedy_request(p, NEW, output_config=oc)])[0] for p in prompts]
        assert [tokens_of(o) for o in outs] == reference
        reused = [o[-1].result.request_perf_metrics.kv_cache_metrics.num_reused_blocks
                  for o in outs]
        assert reused == ([0, 4, 4] if reuse else [0, 0, 0])  # 35 tokens: 4 full blocks
        # the same prompt again: everything but the block holding the last token
        again = run(ex, [greedy_request(prompts[0], NEW, output_config=oc)])[0]
        assert tokens_of(again) == reference[0]
        wait_idle(ex)
        assert ex.get_kv_cache_stats().free_num_blocks == ex.block_manager.num_blocks
        ex.shutdown()


def test_preemption_under_max_utilization_keeps_outputs(make_executor, exec_hf):
    prompts = [prompt(10, 300 + i) for i in range(4)]
    reference = [hf_reference(exec_hf, p, 30) for p in prompts]
    # 4 x (10 + 30) tokens need 20 blocks of 8; the cache has 10
    ex = make_executor(kv_tokens=80, scheduler_config=SchedulerConfig(
        CapacitySchedulerPolicy.MAX_UTILIZATION))
    outs = run(ex, [greedy_request(p, 30) for p in prompts])
    assert [tokens_of(o) for o in outs] == reference
    stats = ex.get_latest_iteration_stats()
    assert sum(s.num_preempted_requests for s in stats) > 0
    wait_idle(ex)
    assert ex.get_kv_cache_stats().free_num_blocks == 10


def test_guaranteed_no_evict_with_small_cache_never_preempts(make_executor, exec_hf):
    prompts = [prompt(10, 300 + i) for i in range(4)]
    reference = [hf_reference(exec_hf, p, 30) for p in prompts]
    ex = make_executor(kv_tokens=80)
    outs = run(ex, [greedy_request(p, 30) for p in prompts])
    assert [tokens_of(o) for o in outs] == reference
    stats = ex.get_latest_iteration_stats()
    assert sum(s.num_preempted_requests for s in stats) == 0
    assert max(s.num_active_requests for s in stats) <= 2


def test_draft_tokens_verified_in_one_forward(make_executor, exec_hf, reference):
    ex = make_executor()
    oc = OutputConfig(exclude_input_from_output=True, return_perf_metrics=True)
    good = reference[1][:4]
    bad = reference[1][:2] + [(reference[1][2] + 1) % 300, 7]
    for drafts, accepted in ((good, 4), (bad, 2)):
        req = greedy_request(PROMPTS[1], NEW, output_config=oc,
                             external_draft_tokens_config=ExternalDraftTokensConfig(drafts))
        out = run(ex, [req])[0]
        assert tokens_of(out) == reference[1]
        spec = out[-1].result.request_perf_metrics.speculative_decoding
        assert (spec.total_draft_tokens, spec.total_accepted_draft_tokens) == (4, accepted)


def test_log_probs_and_logits_match_transformers(make_executor, exec_hf, reference):
    ex = make_executor()
    oc = OutputConfig(return_log_probs=True, return_context_logits=True,
                      return_generation_logits=True, exclude_input_from_output=True)
    p, ref = PROMPTS[2], reference[2]
    res = run(ex, [greedy_request(p, NEW, output_config=oc)])[0][-1].result
    full = hf_logits(exec_hf, p + ref)
    assert torch.allclose(res.context_logits, full[: len(p)], atol=1e-3)
    assert res.generation_logits.shape == (1, NEW, full.shape[1])
    assert torch.allclose(res.generation_logits[0], full[len(p) - 1 : -1], atol=1e-3)
    lp = torch.log_softmax(full[len(p) - 1 : -1], -1).gather(1, torch.tensor(ref)[:, None])
    assert res.log_probs[0] == pytest.approx(lp.squeeze(1).tolist(), abs=1e-4)
    assert res.cum_log_probs[0] == pytest.approx(lp.sum().item(), abs=1e-3)


def test_context_logits_with_chunked_prefill(make_executor, exec_hf):
    ex = make_executor(enable_chunked_context=True, max_num_tokens=8, reuse=True)
    p = PROMPTS[2]
    oc = OutputConfig(return_context_logits=True)
    res = run(ex, [greedy_request(p, 2, output_config=oc)])[0][-1].result
    assert torch.allclose(res.context_logits, hf_logits(exec_hf, p), atol=1e-3)
