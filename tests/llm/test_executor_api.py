"""Executor API on the real engine: streaming, stop conditions, cancellation, queue
limits, num_return_sequences, seeded sampling, errors, asyncio, stats, shutdown."""

from __future__ import annotations

import asyncio
import datetime
import threading
import time

import pytest
from executor_helpers import (
    TIMEOUT,
    collect,
    greedy_request,
    hf_reference,
    prompt,
    run,
    sampled_request,
    tokens_of,
    wait_idle,
)

from llmserve.core.errors import InvalidArgument, Unavailable
from llmserve.llm import (
    FinishReason,
    OutputConfig,
    Request,
    SamplingConfig,
)

P = prompt(11, 7)


@pytest.fixture(scope="module")
def ref(exec_hf):
    return hf_reference(exec_hf, P, 16)


def test_streaming_deltas_concatenate_to_final_output(make_executor, ref):
    ex = make_executor()
    streamed, final = run(ex, [Request(P, 16, streaming=True), Request(P, 16)])
    assert len(streamed) == 16 and all(len(r.result.output_token_ids[0]) == 1 for r in streamed)
    assert [r.result.is_final for r in streamed] == [False] * 15 + [True]
    assert len(final) == 1 and final[0].result.is_final
    assert P + tokens_of(streamed) == final[0].result.output_token_ids[0] == P + ref
    assert final[0].result.finish_reasons == [FinishReason.LENGTH]


def test_stop_words_and_end_id(make_executor, ref):
    ex = make_executor()
    end = ref[5]
    cut = ref.index(end)
    stop = [ref[3], ref[4]]
    by_end, by_stop, longest = run(ex, [
        greedy_request(P, 16, end_id=end),
        greedy_request(P, 16, stop_words=[[299, 298, 297], stop]),
        greedy_request(P, 16, end_id=-1),
    ])
    assert tokens_of(by_end) == ref[:cut]  # the end token itself is not output
    assert by_end[-1].result.finish_reasons == [FinishReason.END_ID]
    assert tokens_of(by_stop)[-2:] == stop and len(tokens_of(by_stop)) <= 5
    assert by_stop[-1].result.finish_reasons == [FinishReason.STOP_WORDS]
    assert tokens_of(longest) == ref  # no end id: runs to max_tokens


def test_min_tokens_delays_end_id(make_executor, ref):
    ex = make_executor()
    end = ref[0]
    out = run(ex, [greedy_request(P, 8, end_id=end, sampling_config=SamplingConfig(min_tokens=3))])
    toks = tokens_of(out[0])
    assert len(toks) >= 3 and end not in toks[:3]


def test_cancel_frees_blocks_and_sends_final_response(make_executor):
    ex = make_executor(max_batch_size=1)
    start = ex.get_kv_cache_stats().free_num_blocks
    running = ex.enqueue_request(Request(P, 200, streaming=True))
    queued = ex.enqueue_request(Request(P, 200))
    first = ex.await_responses(running, TIMEOUT)
    assert first and not first[-1].is_final
    ex.cancel_request(running)
    ex.cancel_request(queued)
    got = collect(ex, [running, queued])
    for rid in (running, queued):
        last = got[rid][-1]
        assert last.is_final and last.result.finish_reasons == [FinishReason.CANCELLED]
    assert len(tokens_of(first + got[running])) < 200
    wait_idle(ex)
    assert ex.get_kv_cache_stats().free_num_blocks == start
    ex.cancel_request(running)  # already finished: a no-op
    with pytest.raises(InvalidArgument):
        ex.await_responses(running, datetime.timedelta(milliseconds=10))


def test_max_queue_size_rejects_at_once(make_executor):
    ex = make_executor(max_batch_size=1, max_queue_size=2)
    busy = ex.enqueue_request(Request(P, 200, streaming=True))
    ex.await_responses(busy, TIMEOUT)  # admitted: no longer queued
    ex.enqueue_requests([Request(P, 4), Request(P, 4)])
    with pytest.raises(Unavailable, match="Maximum queue size of 2"):
        ex.enqueue_request(Request(P, 4))
    ex.cancel_request(busy)


def test_num_return_sequences(make_executor, ref):
    ex = make_executor()
    greedy = run(ex, [Request(P, 16, sampling_config=SamplingConfig(num_return_sequences=3),
                              output_config=OutputConfig(exclude_input_from_output=True))])[0]
    assert sorted(r.result.sequence_index for r in greedy) == [0, 1, 2]
    assert [r.result.is_final for r in greedy] == [False, False, True]
    assert all(r.result.is_sequence_final for r in greedy)
    assert all(tokens_of(greedy, i) == ref for i in range(3))
    a, b, single = run(ex, [sampled_request(P, 16, seed=5, n=2),
                            sampled_request(P, 16, seed=5, n=2),
                            sampled_request(P, 16, seed=5)])
    assert tokens_of(a, 0) == tokens_of(b, 0) and tokens_of(a, 1) == tokens_of(b, 1)
    assert tokens_of(a, 0) != tokens_of(a, 1)
    assert tokens_of(a, 0) == tokens_of(single)  # sequence 0 uses the request's own seed
    wait_idle(ex)
    assert ex.get_kv_cache_stats().used_num_blocks == 0


def test_seeded_sampling_independent_of_neighbours(make_executor):
    ex = make_executor()
    alone = tokens_of(run(ex, [sampled_request(P, 16, seed=42)])[0])
    crowd = run(ex, [sampled_request(prompt(9, 1), 20, seed=1), sampled_request(P, 16, seed=42),
                     sampled_request(prompt(30, 2), 5, seed=2)])
    assert tokens_of(crowd[1]) == alone
    other = tokens_of(run(ex, [sampled_request(P, 16, seed=43)])[0])
    assert other != alone


def test_perf_metrics_and_stats(make_executor):
    ex = make_executor(request_stats_max_iterations=100, reuse=True)
    oc = OutputConfig(return_perf_metrics=True)
    res = run(ex, [Request(P, 4, output_config=oc)])[0][-1].result
    t = res.request_perf_metrics.timing_metrics
    assert 0 < t.arrival_time <= t.first_scheduled_time <= t.first_token_time <= t.last_token_time
    kv = res.request_perf_metrics.kv_cache_metrics
    assert kv.num_total_allocated_blocks == kv.num_new_allocated_blocks == 2  # 15 tokens
    iters = ex.get_latest_iteration_stats()
    assert len(iters) == 4 and iters[0].num_tokens == len(P)
    assert iters[0].kv_cache_stats.alloc_new_blocks == 2
    assert ex.get_latest_iteration_stats() == []  # drained
    req_stats = ex.get_latest_request_stats()
    assert req_stats and req_stats[0].request_stats[0].stage.value == "GENERATION_IN_PROGRESS"


def test_request_errors(make_executor):
    ex = make_executor(max_beam_width=2, max_num_tokens=64)
    with pytest.raises(InvalidArgument, match=r"Prompt length \(256\) exceeds maximum input "
                       r"length \(255\)"):
        ex.enqueue_request(Request(prompt(256, 1), 4))
    with pytest.raises(InvalidArgument, match="max_num_tokens"):
        ex.enqueue_request(Request(prompt(100, 1), 4))
    with pytest.raises(InvalidArgument, match="empty"):
        ex.enqueue_request(Request([], 4))
    with pytest.raises(InvalidArgument, match="input_token_ids"):
        ex.enqueue_request(Request([5, 100000], 4))
    with pytest.raises(InvalidArgument, match="max_beam_width"):
        ex.enqueue_request(Request(P, 4, sampling_config=SamplingConfig(beam_width=3)))
    with pytest.raises(InvalidArgument, match="num_return_sequences"):
        ex.enqueue_request(Request(P, 4, sampling_config=SamplingConfig(
            beam_width=2, num_return_sequences=3)))
    beam = ex.enqueue_request(Request(P, 4, sampling_config=SamplingConfig(beam_width=2)))
    (resp,) = ex.await_responses(beam, TIMEOUT)  # beam search: one final response
    assert not resp.has_error() and resp.is_final
    assert len(resp.result.output_token_ids) == 2
    with pytest.raises(InvalidArgument, match="KV cache blocks"):
        small = make_executor(kv_tokens=16)
        small.enqueue_request(Request(P, 40))


def test_output_length_lowered_to_fit_max_seq_len(make_executor, ref, caplog):
    """As TensorRT-LLM: prompt + max_tokens over max_seq_len is not an error; the output
    length becomes max_seq_len - prompt length, with a warning."""
    ex = make_executor(max_seq_len=len(P) + 6)
    with caplog.at_level("WARNING", logger="llmserve.llm.executor"):
        (responses,) = run(ex, [Request(P, 1000)])
    assert tokens_of(responses) == P + ref[:6]
    assert responses[-1].result.finish_reasons == [FinishReason.LENGTH]
    assert "(11 + 1000 + 0) exceeds maximum sequence length (17). Number of requested " \
           "output tokens is changed to (6)." in caplog.text


def test_asyncio_iteration_and_early_exit_cancels(make_executor, ref):
    ex = make_executor()

    async def main():
        rid = ex.enqueue_request(greedy_request(P, 16, streaming=True))
        toks = []
        async for r in ex.iter_responses(rid):
            toks += r.result.output_token_ids[0]
        other = ex.enqueue_request(greedy_request(P, 200, streaming=True))
        async for _ in ex.iter_responses(other):
            break  # leaving early cancels the request
        return toks

    assert asyncio.run(main()) == ref
    wait_idle(ex)
    assert ex.get_kv_cache_stats().used_num_blocks == 0


def test_callback_receives_buffered_and_later_responses(make_executor, ref):
    ex = make_executor()
    rid = ex.enqueue_request(greedy_request(P, 16, streaming=True))
    while ex.get_num_responses_ready(rid) == 0:  # some responses buffered first
        time.sleep(0.001)
    got, done = [], threading.Event()

    def on_response(r):
        got.append(r)
        if r.is_final:
            done.set()

    ex.add_response_callback(rid, on_response)
    assert done.wait(30)
    assert tokens_of(got) == ref


def test_shutdown_drains_or_cancels(make_executor):
    ex = make_executor()
    ids = ex.enqueue_requests([Request(P, 8), Request(P, 8)])
    ex.shutdown(wait_for_requests=True)
    assert not ex.can_enqueue_requests()
    with pytest.raises(Unavailable):
        ex.enqueue_request(Request(P, 4))
    got = collect(ex, ids)
    assert all(g[-1].result.finish_reasons == [FinishReason.LENGTH] for g in got.values())
    ex2 = make_executor()
    rid = ex2.enqueue_request(Request(P, 200, streaming=True))
    ex2.await_responses(rid, TIMEOUT)
    ex2.shutdown()
    last = collect(ex2, [rid])[rid][-1]
    assert last.result.finish_reasons == [FinishReason.CANCELLED]
    assert ex2.get_kv_cache_stats().used_num_blocks == 0


def test_priority_outside_zero_to_one_is_refused(make_executor):
    ex = make_executor()
    with pytest.raises(InvalidArgument, match=r"priority must be in \[0, 1\]"):
        ex.enqueue_request(greedy_request(prompt(4, 1), 2, priority=1.5))
