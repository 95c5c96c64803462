"""KV cache sizing, allocation, memory probing and block copies (beam / copy-on-write)."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import random_tokens
from llm_fixtures import hf_logits, load_hf_model, make_tiny_checkpoint

from llmserve.core.errors import InvalidArgument
from llmserve.llm.engine import KVCache, ModelRunner, SeqChunk


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("kv"), "llama", with_tokenizer=False)


def test_sizes_and_allocation(checkpoint):
    runner = ModelRunner(checkpoint)
    per_block = runner.kv_cache_bytes_per_block(16)
    assert per_block == 2 * 2 * 16 * 2 * 16 * 4  # K+V, layers, block, kv heads, dim, fp32
    runner.allocate_kv_cache(num_blocks=10, block_size=16)
    cache = runner.kv_cache
    assert cache is not None and cache.nbytes() == 10 * per_block
    assert cache.k[0].shape == (10, 16, 2, 16) and cache.v[1].shape == (10, 16, 2, 16)
    assert (runner.num_blocks, runner.block_size) == (10, 16)
    assert runner.available_memory_bytes() > 0
    with pytest.raises(InvalidArgument):
        runner.allocate_kv_cache(num_blocks=0, block_size=16)


def test_copy_blocks_reads_before_writing():
    cache = KVCache(2, 4, 2, 1, 3, torch.float32, "cpu")
    for block in range(4):
        cache.data[:, :, block] = float(block)
    cache.copy_blocks([(0, 1), (1, 2)])
    assert cache.data[:, :, 1].eq(0.0).all() and cache.data[:, :, 2].eq(1.0).all()
    assert cache.data[:, :, 3].eq(3.0).all()
    with pytest.raises(InvalidArgument):
        cache.copy_blocks([(0, 4)])


def test_copied_blocks_continue_like_the_original(checkpoint):
    runner = ModelRunner(checkpoint)
    runner.allocate_kv_cache(num_blocks=12, block_size=4)
    tokens = random_tokens(11, runner.arch.vocab_size, seed=7)
    expected = hf_logits(load_hf_model(checkpoint), tokens)
    original = [5, 2, 9]
    runner.forward([SeqChunk(tokens[:10], 0, original, "none")])
    # A forked sequence shares the full blocks and copies the partial last one.
    runner.copy_blocks([(9, 7)])
    forked = [5, 2, 7]
    out = runner.forward(
        [
            SeqChunk(tokens[10:11], 10, original, "last"),
            SeqChunk(tokens[10:11], 10, forked, "last"),
        ]
    )
    torch.testing.assert_close(out, expected[10:11].expand(2, -1), atol=1e-4, rtol=1e-4)
