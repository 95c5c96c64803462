"""Attention windows from KvCacheConfig (max_attention_window, sink_token_length): greedy
output equals transformers with the same sliding window, sink tokens equal a reference
forward with the mask built by hand, and blocks outside the window are freed so a
sequence far longer than the KV cache runs in it."""

from __future__ import annotations

import pytest
import torch
from executor_helpers import collect, greedy_request, prompt, tokens_of
from llm_fixtures import make_tiny_checkpoint

from llmserve.core.errors import InvalidArgument
from llmserve.llm import Executor, ExecutorConfig, KvCacheConfig, ModelType
from llmserve.llm.attention_window import layer_windows, widest_window
from llmserve.llm.block_manager import BlockManager
from llmserve.llm.engine import ModelRunner
from llmserve.llm.engine.attention import FREED_BLOCK
from llmserve.llm.request import Request
from llmserve.llm.sampling import SamplingParams
from llmserve.llm.sequence import RequestState
from llmserve.llm.stop import StopCriteria

BS = 4


@pytest.fixture(scope="module")
def mistral(tmp_path_factory):
    """A Mistral checkpoint without a window of its own, its runner, and transformers."""
    from transformers import AutoModelForCausalLM

    path = make_tiny_checkpoint(tmp_path_factory.mktemp("window"), "mistral")
    windowed = AutoModelForCausalLM.from_pretrained(str(path), sliding_window=10).eval()
    plain = AutoModelForCausalLM.from_pretrained(str(path)).eval()
    return path, ModelRunner(path), windowed, plain


def _executor(path, runner, **kv) -> Executor:
    config = ExecutorConfig(
        kv_cache_config=KvCacheConfig(max_tokens=kv.pop("max_tokens", 64), **kv),
        tokens_per_block=BS, max_num_tokens=16, enable_chunked_context=True)
    return Executor(path, ModelType.DECODER_ONLY, config, runner=runner)


def _reference(model, tokens: list[int], n: int, mask_of=None) -> list[int]:
    """Greedy continuation by full forwards; mask_of(length) gives a [q, k] bool mask."""
    ids = list(tokens)
    with torch.inference_mode():
        for _ in range(n):
            mask = None if mask_of is None else mask_of(len(ids))[None, None]
            logits = model(torch.tensor([ids]), attention_mask=mask).logits[0, -1]
            ids.append(int(logits.argmax()))
    return ids[len(tokens):]


def _run_with_stats(ex: Executor, requests: list[Request]):
    ids = ex.enqueue_requests(requests)
    got = collect(ex, ids)
    stats = ex.get_latest_iteration_stats()
    return [tokens_of(got[i]) for i in ids], max(s.kv_cache_stats.used_num_blocks
                                                 for s in stats)


@pytest.mark.parametrize("kernel", [True, False], ids=["c_kernel", "torch_decode"])
def test_window_matches_transformers_and_frees_blocks(mistral, kernel):
    path, runner, windowed, _ = mistral
    ex = _executor(path, runner, max_attention_window=10)
    runner._attention_kernels = kernel and runner._attention_kernels
    try:
        # 90 and 70 tokens each, in a cache of 64 tokens: only freeing makes them fit
        prompts = [prompt(30, 1), prompt(22, 2)]
        outs, peak = _run_with_stats(ex, [greedy_request(prompts[0], 60),
                                          greedy_request(prompts[1], 48)])
        held = ex.block_manager.max_blocks_held(90, 16)
        assert held < ex.block_manager.blocks_for(90)
        assert peak <= 2 * held
        assert outs == [_reference(windowed, prompts[0], 60),
                        _reference(windowed, prompts[1], 48)]
    finally:
        ex.shutdown()
        runner._attention_kernels = True


def test_sink_tokens_match_a_reference_mask(mistral):
    path, runner, windowed, plain = mistral
    window, sink = 10, 3

    def mask_of(n: int) -> torch.Tensor:
        q, k = torch.arange(n)[:, None], torch.arange(n)[None, :]
        return (k <= q) & ((k > q - (window - sink)) | (k < sink))

    tokens = prompt(26, 3)
    ex = _executor(path, runner, max_attention_window=window, sink_token_length=sink)
    try:
        outs, _ = _run_with_stats(ex, [greedy_request(tokens, 30)])
    finally:
        ex.shutdown()
    assert outs[0] == _reference(plain, tokens, 30, mask_of)
    assert outs[0] != _reference(windowed, tokens, 30)  # the sinks change the output


def test_per_layer_windows_follow_transformers_layer_types(tmp_path):
    """A list is one window per layer: [10, max_seq_len] is a sliding first layer and a
    full second one, as Qwen2 with layer_types says; nothing can be freed then."""
    from transformers import AutoModelForCausalLM

    path = make_tiny_checkpoint(tmp_path, "qwen2")
    ref = AutoModelForCausalLM.from_pretrained(
        str(path), use_sliding_window=True, sliding_window=10, max_window_layers=0,
        layer_types=["sliding_attention", "full_attention"]).eval()
    runner = ModelRunner(path)
    ex = _executor(path, runner, max_tokens=256, max_attention_window=[10, 256])
    try:
        assert runner.model.windows == [10, None]
        assert ex.block_manager.window is None
        tokens = prompt(20, 4)
        outs, peak = _run_with_stats(ex, [greedy_request(tokens, 24)])
    finally:
        ex.shutdown()
    assert peak == ex.block_manager.blocks_for(44)
    assert outs[0] == _reference(ref, tokens, 24)


def test_layer_windows_rules():
    kv = KvCacheConfig(max_attention_window=[8, 100], sink_token_length=2)
    assert layer_windows(kv, [None, None, 6, None], 64) == ([8, None, 6, None], 2)
    assert widest_window([8, 6]) == 8 and widest_window([8, None]) is None
    with pytest.raises(InvalidArgument, match="smaller than the attention window"):
        layer_windows(KvCacheConfig(max_attention_window=4, sink_token_length=4), [None], 64)
    with pytest.raises(InvalidArgument, match=">= 1"):
        layer_windows(KvCacheConfig(max_attention_window=[0]), [None], 64)


def _seq(tokens: list[int]):
    req = Request(list(tokens), max_tokens=4)
    return RequestState(1, req, SamplingParams(), StopCriteria(4), 1).seqs[0]


def test_block_manager_frees_blocks_outside_the_window_and_keeps_sinks():
    bm = BlockManager(32, BS)
    bm.set_attention_window(8, 2)
    seq = _seq(list(range(30)))
    assert bm.allocate_slots(seq, 30) == []
    seq.num_computed = 30
    # the next query (position 30) sees keys 0, 1 and 25..30: blocks 1..5 are not needed
    assert bm.release_out_of_window(seq) == 5
    assert seq.block_table[1:6] == [FREED_BLOCK] * 5
    assert bm.held(seq) == 3 and bm.num_free_blocks == 29
    child = _seq(list(range(30)))
    bm.fork(seq, child)  # freed entries are not shared
    bm.free(child)
    bm.free(seq)
    assert bm.num_free_blocks == 32 and all(b.ref_count == 0 for b in bm.blocks)


@pytest.mark.parametrize("span", [1, 3, 7])
def test_blocks_held_never_exceed_the_bound(span):
    bm = BlockManager(64, BS)
    bm.set_attention_window(9, 2)
    seq = _seq(list(range(span)))
    bound = bm.max_blocks_held(400, span)
    while seq.num_computed < 200:
        assert bm.allocate_slots(seq, span) == []
        assert bm.held(seq) <= bound
        seq.num_computed += span
        seq.token_ids.extend(range(span))
        bm.release_out_of_window(seq)
    assert bm.held(seq) < bound + 1 < bm.blocks_for(200)


def test_reused_prefix_outside_the_window_is_not_taken():
    bm = BlockManager(32, BS, enable_reuse=True)
    bm.set_attention_window(8, 0)
    first = _seq(list(range(30)))
    assert bm.allocate_slots(first, 30) == []
    first.num_computed = 30
    bm.cache_full_blocks(first)
    bm.free(first)
    again = _seq(list(range(30)) + [7])
    computed = bm.computed_blocks(again)
    assert len(computed) == 7
    assert bm.allocate_slots(again, 3, computed) == []
    # keys from 28 - 8 + 1 = 21 on: blocks 0..4 stay in the free queue
    assert again.block_table[:5] == [FREED_BLOCK] * 5
    assert again.num_reused_blocks == 7 and bm.held(again) == 3
