"""The host tier of block reuse (KvCacheConfig.host_cache_size): reusable blocks evicted
from the device cache move to host memory and come back on a prefix hit, with the same
greedy output and the reuse counted in the request's and the iteration's stats."""

from __future__ import annotations

from executor_helpers import collect, greedy_request, prompt, tokens_of

from llmserve.llm import Executor, ExecutorConfig, KvCacheConfig, ModelType, OutputConfig
from llmserve.llm.block_manager import BlockManager
from llmserve.llm.host_tier import HostTier
from llmserve.llm.request import Request
from llmserve.llm.sampling import SamplingParams
from llmserve.llm.sequence import RequestState
from llmserve.llm.stop import StopCriteria

BS = 4


class Memory:
    """Block contents as labels: what the engine's copies would move."""

    def __init__(self) -> None:
        self.device: dict[int, object] = {}
        self.host: dict[int, object] = {}

    def offload(self, block: int, slot: int) -> None:
        self.host[slot] = self.device[block]

    def onboard(self, slot: int, block: int) -> None:
        self.device[block] = self.host[slot]


def _prefill(bm: BlockManager, tokens: list[int], mem: Memory, label: str):
    req = Request(list(tokens), max_tokens=4)
    seq = RequestState(1, req, SamplingParams(), StopCriteria(4), 1).seqs[0]
    computed = bm.computed_blocks(seq)
    assert bm.allocate_slots(seq, len(tokens) - len(computed) * BS, computed) == []
    for i, block in enumerate(seq.block_table[len(computed):], start=len(computed)):
        mem.device[block] = (label, i)
    seq.num_computed = len(tokens)
    bm.cache_full_blocks(seq)
    bm.free(seq)
    return computed


def test_evicted_blocks_go_to_host_and_come_back_on_a_prefix_hit():
    mem = Memory()
    bm = BlockManager(4, BS, enable_reuse=True)
    bm.host = HostTier(4, mem.offload, mem.onboard)
    bm.events = []
    a = list(range(100, 112))
    _prefill(bm, a, mem, "a")  # 3 cached blocks
    _prefill(bm, list(range(200, 216)), mem, "b")  # 4 blocks: a's 3 are offloaded
    assert bm.host.total_offloaded == 3 and len(bm.host) == 3
    stored_on_host = [e for e in bm.take_events()
                      if e["type"] == "BlockStored" and e["medium"] == "CPU"]
    assert len(stored_on_host) == 3
    computed = _prefill(bm, a + [1], mem, "c")
    assert len(computed) == 3 and bm.host.total_onboarded == 3
    assert [mem.device[b] for b in computed] == [("a", 0), ("a", 1), ("a", 2)]
    events = bm.take_events()
    assert {e["medium"] for e in events if e["type"] == "BlockRemoved"} == {"GPU", "CPU"}
    # b's 4 blocks made room (3 onboards + c's own block): all on host now
    assert bm.host.total_offloaded == 7 and len(bm.host) == 4
    # a full host evicts its oldest blocks for newer ones
    _prefill(bm, list(range(300, 316)), mem, "d")
    removed = [h for e in bm.take_events() if e["type"] == "BlockRemoved"
               and e["medium"] == "CPU" for h in e["block_hashes"]]
    assert len(removed) == 3 and len(bm.host) == 4
    assert _prefill(bm, a + [2], mem, "e") != []  # a is on host again


def _executor(ckpt, runner, host_blocks: int) -> Executor:
    host = host_blocks * runner.kv_cache_bytes_per_block(BS)
    config = ExecutorConfig(
        kv_cache_config=KvCacheConfig(max_tokens=40, enable_block_reuse=True,
                                      host_cache_size=host or None),
        tokens_per_block=BS)
    return Executor(ckpt, ModelType.DECODER_ONLY, config, runner=runner)


def _run(ex: Executor, tokens: list[int], n: int):
    oc = OutputConfig(exclude_input_from_output=True, return_perf_metrics=True)
    (rid,) = ex.enqueue_requests([greedy_request(tokens, n, output_config=oc)])
    responses = collect(ex, [rid])[rid]
    metrics = responses[-1].result.request_perf_metrics.kv_cache_metrics
    return tokens_of(responses), metrics.num_reused_blocks


def test_prefix_hit_from_host_memory_through_the_executor(exec_ckpt, exec_runner):
    first, other = prompt(24, 11), prompt(28, 12)
    reused = {}
    for host_blocks in (0, 16):
        ex = _executor(exec_ckpt, exec_runner, host_blocks)
        try:
            out_a, _ = _run(ex, first, 4)
            _run(ex, other, 8)  # needs 9 of the 10 blocks: evicts the first prompt's
            again, reused[host_blocks] = _run(ex, first, 4)
            assert again == out_a
            if host_blocks:
                host = ex.block_manager.host
                assert host.total_offloaded >= 5 and host.total_onboarded >= 4
                stats = ex.get_latest_iteration_stats()
                assert sum(s.kv_cache_stats.reused_blocks for s in stats) == 5
        finally:
            ex.shutdown()
    # (24 - 1) // 4 prompt blocks: most were lost without the host tier, all came back
    assert reused[0] < 5 == reused[16]
