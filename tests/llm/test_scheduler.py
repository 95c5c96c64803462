"""Scheduler: token budget, chunked context, batch size, and the capacity policies."""

from __future__ import annotations

from llmserve.llm.block_manager import BlockManager
from llmserve.llm.config import CapacitySchedulerPolicy as Policy
from llmserve.llm.request import Request
from llmserve.llm.sampling import SamplingParams
from llmserve.llm.scheduler import Scheduler
from llmserve.llm.sequence import RequestState, SequenceStatus
from llmserve.llm.stop import StopCriteria


def make_state(rid: int, prompt_len: int, max_tokens: int) -> RequestState:
    req = Request(list(range(1, prompt_len + 1)), max_tokens=max_tokens)
    return RequestState(rid, req, SamplingParams(), StopCriteria(max_tokens), 1)


def make_scheduler(policy=Policy.GUARANTEED_NO_EVICT, blocks=64, block_size=4,
                   max_batch_size=8, max_num_tokens=64, chunked=False) -> Scheduler:
    return Scheduler(BlockManager(blocks, block_size), policy, max_batch_size,
                     max_num_tokens, chunked)


def step(sched: Scheduler):
    """One scheduling step plus what the executor does after the forward."""
    out = sched.schedule()
    for ss in out.scheduled:
        seq = ss.seq
        seq.num_computed += ss.num_tokens
        if seq.num_computed == len(seq.token_ids):
            seq.token_ids.append(7)
            if seq.num_generated >= seq.state.request.max_tokens:
                sched.finish(seq)
    return out


def run_to_end(sched: Scheduler, limit: int = 500) -> int:
    steps = 0
    while sched.has_work():
        step(sched)
        steps += 1
        assert steps < limit
    return steps


def test_chunked_context_splits_prompt_by_token_budget():
    sched = make_scheduler(max_num_tokens=16, chunked=True)
    sched.add(make_state(1, 50, 2))
    sizes = [step(sched).scheduled[0].num_tokens for _ in range(5)]
    assert sizes == [16, 16, 16, 2, 1]


def test_without_chunking_prompt_waits_for_a_whole_budget():
    sched = make_scheduler(max_num_tokens=16)
    sched.add(make_state(1, 4, 10))
    step(sched)
    sched.add(make_state(2, 16, 2))  # needs 16 tokens, only 15 left next to the decode
    out = step(sched)
    assert [ss.seq.request_id for ss in out.scheduled] == [1]
    assert len(sched.waiting) == 1


def test_decode_and_prefill_share_a_step():
    sched = make_scheduler(max_num_tokens=32)
    sched.add(make_state(1, 8, 5))
    step(sched)
    sched.add(make_state(2, 8, 5))
    out = step(sched)
    assert [(ss.seq.request_id, ss.num_tokens) for ss in out.scheduled] == [(1, 1), (2, 8)]
    assert out.newly_admitted[0].request_id == 2


def test_max_batch_size_limits_running_sequences():
    sched = make_scheduler(max_batch_size=2)
    for rid in range(1, 5):
        sched.add(make_state(rid, 4, 3))
    out = step(sched)
    assert len(out.scheduled) == 2 and len(sched.waiting) == 2
    run_to_end(sched)
    assert sched.bm.num_free_blocks == sched.bm.num_blocks


def test_guaranteed_no_evict_reserves_worst_case():
    # each request may grow to 4 + 12 = 16 tokens = 4 blocks; 10 blocks fit two
    sched = make_scheduler(blocks=10)
    for rid in range(1, 4):
        sched.add(make_state(rid, 4, 12))
    out = step(sched)
    assert len(out.scheduled) == 2 and len(sched.waiting) == 1
    preempted = 0
    while sched.has_work():
        preempted += len(step(sched).preempted)
    assert preempted == 0
    assert sched.bm.num_free_blocks == 10


def test_max_utilization_admits_greedily_and_preempts_newest():
    sched = make_scheduler(Policy.MAX_UTILIZATION, blocks=10)
    states = [make_state(rid, 4, 12) for rid in range(1, 4)]
    for s in states:
        sched.add(s)
    out = step(sched)
    assert len(out.scheduled) == 3  # 1 block each now, worst case not reserved
    preempted = []
    while sched.has_work():
        preempted += step(sched).preempted
    assert preempted and preempted[0].request_id == 3  # the newest goes first
    assert all(s.seqs[0].num_generated == 12 for s in states)
    assert all(s.seqs[0].is_finished for s in states)
    assert sched.bm.num_free_blocks == 10


def test_preempted_sequence_recomputes_all_its_tokens():
    sched = make_scheduler(Policy.MAX_UTILIZATION, blocks=10)
    states = [make_state(rid, 4, 12) for rid in range(1, 4)]
    for s in states:
        sched.add(s)
    while True:
        out = step(sched)
        if out.preempted:
            break
    victim = out.preempted[0]
    assert victim.status is SequenceStatus.PREEMPTED and victim.num_computed == 0
    assert victim.block_table == [] and sched.waiting[0] is victim
    generated = victim.num_generated
    while victim.status is not SequenceStatus.RUNNING:
        out = step(sched)
    mine = [ss for ss in out.scheduled if ss.seq is victim]
    assert mine and mine[0].num_tokens == 4 + generated  # prompt + generated, recomputed


def test_static_batch_admits_only_when_idle():
    sched = make_scheduler(Policy.STATIC_BATCH)
    sched.add(make_state(1, 4, 3))
    step(sched)
    sched.add(make_state(2, 4, 3))
    out = step(sched)
    assert [ss.seq.request_id for ss in out.scheduled] == [1]
    while sched.running:
        step(sched)
    out = step(sched)
    assert [ss.seq.request_id for ss in out.scheduled] == [2]


def test_abort_frees_blocks_of_running_and_waiting():
    sched = make_scheduler(max_batch_size=1)
    a, b = make_state(1, 9, 5), make_state(2, 9, 5)
    sched.add(a)
    sched.add(b)
    step(sched)
    sched.abort(a)
    sched.abort(b)
    assert not sched.has_work() and sched.bm.num_free_blocks == sched.bm.num_blocks


def test_waiting_requests_are_admitted_by_priority_then_arrival():
    """TensorRT-LLM's Request.priority (0..1, higher first); equal priorities stay FIFO."""
    from llmserve.llm import CapacitySchedulerPolicy, Request
    from llmserve.llm.block_manager import BlockManager
    from llmserve.llm.sampling import SamplingParams
    from llmserve.llm.scheduler import Scheduler
    from llmserve.llm.sequence import RequestState
    from llmserve.llm.stop import StopCriteria

    sched = Scheduler(BlockManager(64, 8), CapacitySchedulerPolicy.GUARANTEED_NO_EVICT,
                      max_batch_size=1, max_num_tokens=64, enable_chunked_context=False)
    for rid, priority in ((1, 0.5), (2, 0.5), (3, 0.9), (4, 0.1), (5, 0.9)):
        req = Request([5, 6, 7], 2, priority=priority)
        sched.add(RequestState(rid, req, SamplingParams(), StopCriteria.build(2, None, None), 1))
    assert [s.state.request_id for s in sched.waiting] == [3, 5, 1, 2, 4]
