"""Beam search in the executor: the same beams and scores as transformers' beam search
(length_penalty, early_stopping, num_return_sequences, end id), mixed batches, beams on
shared KV blocks (copy-on-write, preemption, cancel), streaming, diversity rate."""

from __future__ import annotations

import datetime

import numpy as np
import pytest
import torch
from executor_helpers import collect, greedy_request, hf_reference, prompt, run, wait_idle
from llm_fixtures import PAD_ID, hf_logits

from llmserve.core.errors import InvalidArgument
from llmserve.llm import (
    CapacitySchedulerPolicy,
    FinishReason,
    OutputConfig,
    Request,
    SamplingConfig,
    SchedulerConfig,
)
from llmserve.llm.beam_search import early_stopping_mode, select_candidates

TIMEOUT = datetime.timedelta(seconds=30)
OC = OutputConfig(exclude_input_from_output=True, return_log_probs=True)
ES_INT = {True: 1, False: 0, "never": -1}  # TensorRT-LLM's int early_stopping
# (length_penalty, early_stopping, beam width, num_return_sequences)
CONFIGS = [(1.0, False, 4, 4), (0.0, True, 3, 2), (2.0, "never", 2, 1), (-0.5, False, 4, 3),
           (1.0, True, 4, 4), (0.5, "never", 3, None)]
NEW = 10


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models: one intra-op thread avoids spin-waiting on a shared 2-core box
    (transformers' generate got ~100x slower with 2 threads under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def hf_beams(model, tokens, width, new, lp, es, eos, nret):
    """transformers' beam search: (beams without the end token, sequence scores)."""
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([tokens]), attention_mask=torch.ones(1, len(tokens), dtype=torch.long),
            num_beams=width, do_sample=False, max_new_tokens=new, num_return_sequences=nret or width,
            eos_token_id=eos, pad_token_id=PAD_ID, length_penalty=lp, early_stopping=es,
            return_dict_in_generate=True, output_scores=True)
    beams = []
    for row in out.sequences[:, len(tokens):].tolist():
        beams.append(row[: row.index(eos)] if eos is not None and eos in row else row)
    return beams, out.sequences_scores.tolist()


def beam_request(tokens, new, width, lp=1.0, es=True, eos=None, nret=None, **kw):
    kw.setdefault("output_config", OC)
    sc = SamplingConfig(beam_width=width, length_penalty=lp, early_stopping=ES_INT[es],
                        num_return_sequences=nret)
    return Request(list(tokens), new, end_id=eos, sampling_config=sc, **kw)


def scores_of(result, lp):
    """transformers' score: cum log prob / (generated length incl. the end token) ** lp."""
    return [c / (len(t) + (f is FinishReason.END_ID)) ** lp for c, t, f in
            zip(result.cum_log_probs, result.output_token_ids, result.finish_reasons,
                strict=True)]


def test_beams_equal_transformers_in_one_mixed_batch(make_executor, exec_hf):
    ex = make_executor(max_beam_width=4, kv_tokens=4096)
    p_plain, eos_prompts = prompt(13, 12), [prompt(6, 11), prompt(9, 13)]
    runs = [(p_plain, None)]
    for p in eos_prompts:
        # an end id the beams actually meet: a token early in a lower-ranked beam
        base = run(ex, [beam_request(p, NEW, 4, 1.0, False)])[0][-1].result.output_token_ids
        runs.append((p, next(b[i] for i in (1, 2, 3) for b in base[1:] if b[i] != base[0][0])))
    cases = []
    for p, eos_id in runs:
        for lp, es, width, nret in CONFIGS:
            ref = hf_beams(exec_hf, p, width, NEW, lp, es, eos_id, nret)
            cases.append((beam_request(p, NEW, width, lp, es, eos_id, nret), lp, ref))
    outs = run(ex, [c[0] for c in cases])  # every width (and end id) in the same steps
    ended = 0
    for (req, lp, (beams, scores)), responses in zip(cases, outs, strict=True):
        assert len(responses) == 1  # not streaming: one final response with every beam
        res = responses[0].result
        assert res.is_final and res.output_token_ids == beams, req.sampling_config
        assert scores_of(res, lp) == pytest.approx(scores, abs=1e-3)
        assert [len(lps) for lps in res.log_probs] == [len(b) for b in beams]
        ended += sum(f is FinishReason.END_ID for f in res.finish_reasons)
    assert ended >= 6  # the end id finished hypotheses of different lengths
    stats = ex.get_latest_iteration_stats()
    assert max(s.inflight_batching_stats.num_scheduled_requests for s in stats) >= 40
    wait_idle(ex)
    assert ex.get_kv_cache_stats().free_num_blocks == ex.block_manager.num_blocks


def test_beam_next_to_greedy_and_sampled_requests(make_executor, exec_hf):
    p_beam, p_greedy = prompt(9, 21), prompt(17, 22)
    beams, scores = hf_beams(exec_hf, p_beam, 3, 12, 1.0, False, None, 3)
    greedy_ref = hf_reference(exec_hf, p_greedy, 12)
    sampled = SamplingConfig(top_k=20, top_p=0.9, seed=5, num_return_sequences=2)
    ex = make_executor(max_beam_width=3)
    reqs = [beam_request(p_beam, 12, 3, 1.0, False), greedy_request(p_greedy, 12),
            greedy_request(p_greedy, 12, sampling_config=sampled)]
    out_beam, out_greedy, out_sampled = run(ex, reqs)
    assert out_beam[-1].result.output_token_ids == beams
    assert scores_of(out_beam[-1].result, 1.0) == pytest.approx(scores, abs=1e-3)
    assert out_greedy[-1].result.output_token_ids == [greedy_ref]
    assert sorted(r.result.sequence_index for r in out_sampled) == [0, 1]
    assert all(len(r.result.output_token_ids[0]) == 12 for r in out_sampled)
    stats = ex.get_latest_iteration_stats()
    # 3 beams + 1 greedy + 2 sampled sequences in one forward
    assert max(s.inflight_batching_stats.num_scheduled_requests for s in stats) == 6
    wait_idle(ex)
    assert ex.get_kv_cache_stats().free_num_blocks == ex.block_manager.num_blocks


@pytest.mark.parametrize("policy", [CapacitySchedulerPolicy.MAX_UTILIZATION,
                                    CapacitySchedulerPolicy.GUARANTEED_NO_EVICT])
def test_beams_copy_on_write_in_a_small_cache(make_executor, exec_hf, exec_runner,
                                             monkeypatch, policy):
    copies: list[tuple[int, int]] = []
    real_copy = exec_runner.copy_blocks
    monkeypatch.setattr(exec_runner, "copy_blocks",
                        lambda pairs: (copies.extend(pairs), real_copy(pairs)))
    p_beam = prompt(11, 31)
    greedy = [prompt(10, 32 + i) for i in range(3)]
    reqs = [beam_request(p_beam, 20, 4)] + [greedy_request(g, 30) for g in greedy]
    roomy = make_executor(max_beam_width=4)
    ref = [o[-1].result.output_token_ids for o in run(roomy, reqs)]
    assert ref[1:] == [[hf_reference(exec_hf, g, 30)] for g in greedy]
    # 16 blocks: the beams' worst case; the greedy requests need 15 more. Under
    # MAX_UTILIZATION the beams evict greedy sequences (never the other way round)
    ex = make_executor(max_beam_width=4, kv_tokens=128,
                       scheduler_config=SchedulerConfig(policy))
    copies.clear()
    outs = run(ex, reqs)
    assert [o[-1].result.output_token_ids for o in outs] == ref
    assert copies  # shared partial blocks were copied before a beam wrote to them
    stats = ex.get_latest_iteration_stats()
    preempted = sum(s.num_preempted_requests for s in stats)
    assert preempted > 0 if policy is CapacitySchedulerPolicy.MAX_UTILIZATION else not preempted
    wait_idle(ex)
    assert ex.get_kv_cache_stats().free_num_blocks == ex.block_manager.num_blocks


def test_streaming_carries_whole_beams_and_cancel_frees_blocks(make_executor, exec_hf):
    p = prompt(20, 41)
    ex = make_executor(max_beam_width=4)
    final = run(ex, [beam_request(p, 8, 4, 1.0, False)])[0][-1].result
    responses = run(ex, [beam_request(p, 8, 4, 1.0, False, streaming=True)])[0]
    assert len(responses) == 8
    for step, r in enumerate(responses[:-1], start=1):
        assert not r.result.is_final and len(r.result.output_token_ids) == 4
        assert all(len(b) == step for b in r.result.output_token_ids)  # all so far, no prompt
        assert len(r.result.log_probs[0]) == step
    last = responses[-1].result
    assert last.is_final and last.output_token_ids == final.output_token_ids
    assert last.cum_log_probs == pytest.approx(final.cum_log_probs)
    # 4 beams of >= 21 tokens would need >= 12 blocks of 8 apart; they share the two
    # full prompt blocks (and every block of a common history)
    gen = [s for s in ex.get_latest_iteration_stats()  # both runs: 7 decode steps each
           if s.inflight_batching_stats.num_gen_requests == 4]
    assert len(gen) == 14 and max(s.kv_cache_stats.used_num_blocks for s in gen) < 12

    rid = ex.enqueue_request(beam_request(p, 200, 4, streaming=True))
    got = []
    while len(got) < 3:
        got += ex.await_responses(rid, TIMEOUT)
    ex.cancel_request(rid)
    got += collect(ex, [rid])[rid]
    res = got[-1].result
    assert res.is_final and set(res.finish_reasons) == {FinishReason.CANCELLED}
    assert len(res.output_token_ids) == 4
    wait_idle(ex)
    assert ex.get_kv_cache_stats().free_num_blocks == ex.block_manager.num_blocks


def test_beam_log_probs_and_generation_logits_match_transformers(make_executor, exec_hf):
    p = prompt(8, 51)
    oc = OutputConfig(return_log_probs=True, return_generation_logits=True)
    ex = make_executor(max_beam_width=2)
    res = run(ex, [beam_request(p, 6, 2, output_config=oc)])[0][-1].result
    assert res.generation_logits.shape[:2] == (2, 6)
    for b, beam in enumerate(res.output_token_ids):
        assert beam[: len(p)] == p  # the prompt leads unless excluded
        gen = beam[len(p):]
        full = hf_logits(exec_hf, beam)[len(p) - 1 : -1]
        assert torch.allclose(res.generation_logits[b], full, atol=1e-3)
        lp = torch.log_softmax(full, -1).gather(1, torch.tensor(gen)[:, None]).squeeze(1)
        assert res.log_probs[b] == pytest.approx(lp.tolist(), abs=1e-4)
        assert res.cum_log_probs[b] == pytest.approx(lp.sum().item(), abs=1e-3)


def reference_diverse_beams(model, tokens, width, new, rate):
    """Straightforward diverse beam search (no end id, early stopping, no length
    penalty): each beam's top 2W tokens, penalised by rate * rank in that beam."""
    beams = [(0.0, [])]
    for _ in range(new):
        cands = []
        for score, gen in beams:
            lp = torch.log_softmax(hf_logits(model, tokens + gen)[-1], -1)
            vals, ids = lp.topk(2 * width)
            cands += [(score + v - rate * r, gen + [t])
                      for r, (v, t) in enumerate(zip(vals.tolist(), ids.tolist(), strict=True))]
        cands.sort(key=lambda c: c[0], reverse=True)
        beams = cands[:width]
    return [gen for _, gen in beams]


def test_diversity_rate_matches_reference(make_executor, exec_hf):
    p = prompt(7, 61)
    ex = make_executor(max_beam_width=3)
    req = beam_request(p, 6, 3, lp=0.0)
    plain = run(ex, [req])[0][-1].result.output_token_ids
    req.sampling_config.beam_search_diversity_rate = 1.5
    diverse = run(ex, [req])[0][-1].result.output_token_ids
    assert diverse == reference_diverse_beams(exec_hf, p, 3, 6, 1.5)
    assert diverse != plain


def test_select_candidates_ranks_with_diversity():
    log_probs = torch.tensor([[-1.0, -1.1, -5.0], [-1.5, -1.6, -6.0]])
    scores = torch.tensor([0.0, 0.0])
    best = select_candidates(log_probs, scores, 3)
    assert [(c.parent, c.token) for c in best] == [(0, 0), (0, 1), (1, 0)]
    # rank penalty 1.0: beam 0's second token (-2.1) drops behind beam 1's first (-1.5)
    diverse = select_candidates(log_probs, scores, 3, diversity_rate=1.0)
    assert [(c.parent, c.token) for c in diverse] == [(0, 0), (1, 0), (0, 1)]
    assert [c.score for c in diverse] == pytest.approx([-1.0, -1.5, -2.1])
    assert [c.log_prob for c in diverse] == pytest.approx([-1.0, -1.5, -1.1])


def test_early_stopping_mapping_and_validation(make_executor):
    assert early_stopping_mode(None) is True and early_stopping_mode(1) is True
    assert early_stopping_mode(0) is False
    assert early_stopping_mode(-1) == "never" and early_stopping_mode(2) == "never"
    ex = make_executor(max_beam_width=2)
    p = prompt(5, 71)
    with pytest.raises(InvalidArgument, match="num_return_sequences"):
        ex.enqueue_request(beam_request(p, 4, 2, nret=3))
    with pytest.raises(InvalidArgument, match="max_beam_width"):
        ex.enqueue_request(beam_request(p, 4, 4))
    req = beam_request(p, 4, 2)
    req.sampling_config.beam_search_diversity_rate = -1.0
    with pytest.raises(InvalidArgument, match="diversity"):
        ex.enqueue_request(req)


def test_tensorrtllm_backend_maps_beam_inputs_and_outputs():
    from llmserve.backends.tensorrtllm.request_mapping import build_request
    from llmserve.backends.tensorrtllm.response_mapping import result_tensors
    from llmserve.llm import Result

    item = {
        "input_ids": np.array([5, 6, 7], np.int32),
        "request_output_len": np.array([4], np.int32),
        "beam_width": np.array([3], np.int32),
        "len_penalty": np.array([0.5], np.float32),
        "early_stopping": np.array([False]),
        "beam_search_diversity_rate": np.array([0.25], np.float32),
        "num_return_sequences": np.array([2], np.int32),
        "return_log_probs": np.array([True]),
    }
    request, options = build_request(item, 0, decoupled=True, default_exclude_input=True)
    sc = request.sampling_config
    assert (sc.beam_width, sc.length_penalty, sc.early_stopping) == (3, 0.5, 0)
    assert (sc.beam_search_diversity_rate, sc.num_return_sequences) == (0.25, 2)
    assert options.beam_width == 3
    result = Result(is_final=True, output_token_ids=[[9, 8, 7], [9, 4]],
                    finish_reasons=[FinishReason.LENGTH, FinishReason.END_ID],
                    cum_log_probs=[-1.0, -2.0], log_probs=[[-0.1, -0.2, -0.7], [-1.5, -0.5]])
    out = result_tensors(result, options, pad_id=0)
    assert out["output_ids"].tolist() == [[9, 8, 7], [9, 4, 0]]
    assert out["sequence_length"].tolist() == [3, 2]
    assert out["cum_log_probs"].tolist() == [-1.0, -2.0]
    assert out["output_log_probs"].shape == (2, 3)
