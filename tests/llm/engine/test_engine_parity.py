"""Engine logits and greedy tokens equal transformers on tiny random checkpoints of
every supported family and rope variant: full prefill, chunked prefill on a cached
prefix, token-by-token decode, mixed batches on shuffled block tables, greedy loops."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import BlockPool, random_tokens, runner_greedy
from llm_fixtures import hf_greedy, hf_logits, load_hf_model, make_tiny_checkpoint

from llmserve.llm.engine import ModelRunner, SeqChunk

ATOL = 1e-4
BLOCK_SIZE = 4

VARIANTS = {
    "llama": dict(family="llama"),
    "mistral_mha": dict(family="mistral", num_kv_heads=4),
    "qwen2_bias_mqa": dict(family="qwen2", num_kv_heads=1),
    "llama_tied": dict(family="llama", tie_word_embeddings=True),
    "llama3_rope": dict(
        family="llama",
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    ),
    "linear_rope": dict(family="llama", rope_scaling={"rope_type": "linear", "factor": 2.0}),
    "yarn_rope": dict(
        family="qwen2",
        rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
    ),
    "mistral_window": dict(family="mistral", sliding_window=6),
    "mistral_head_dim": dict(family="mistral", head_dim=32),
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def model(request, tmp_path_factory):
    path = make_tiny_checkpoint(
        tmp_path_factory.mktemp(request.param), with_tokenizer=False, **VARIANTS[request.param]
    )
    runner = ModelRunner(path)
    runner.allocate_kv_cache(num_blocks=96, block_size=BLOCK_SIZE)
    return runner, load_hf_model(path)


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == torch.float32
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=1e-4)


def test_full_prefill(model):
    runner, hf = model
    tokens = random_tokens(13, runner.arch.vocab_size, seed=1)
    table = BlockPool(runner.num_blocks, seed=1).table_for([], 13, BLOCK_SIZE)
    _close(runner.forward([SeqChunk(tokens, 0, table, "all")]), hf_logits(hf, tokens))
    last = runner.forward([SeqChunk(tokens, 0, table, "last")])
    _close(last, hf_logits(hf, tokens)[-1:])
    assert runner.forward([SeqChunk(tokens, 0, table, "none")]).shape == (0, runner.arch.vocab_size)


def test_prefill_in_two_chunks_reuses_cache(model):
    runner, hf = model
    tokens = random_tokens(15, runner.arch.vocab_size, seed=2)
    expected = hf_logits(hf, tokens)
    pool, table = BlockPool(runner.num_blocks, seed=2), []
    first = runner.forward([SeqChunk(tokens[:6], 0, pool.table_for(table, 6, BLOCK_SIZE), "all")])
    _close(first, expected[:6])
    second = runner.forward([SeqChunk(tokens[6:], 6, pool.table_for(table, 15, BLOCK_SIZE), "all")])
    _close(second, expected[6:])


def test_token_by_token_decode(model):
    runner, hf = model
    tokens = random_tokens(14, runner.arch.vocab_size, seed=3)
    expected = hf_logits(hf, tokens)
    pool, table = BlockPool(runner.num_blocks, seed=3), []
    runner.forward([SeqChunk(tokens[:3], 0, pool.table_for(table, 3, BLOCK_SIZE), "none")])
    for pos in range(3, len(tokens)):
        pool.table_for(table, pos + 1, BLOCK_SIZE)
        row = runner.forward([SeqChunk([tokens[pos]], pos, table, "last")])
        _close(row, expected[pos : pos + 1])


def test_mixed_batch_prefill_and_decode(model):
    runner, hf = model
    vocab = runner.arch.vocab_size
    pool = BlockPool(runner.num_blocks, seed=4)
    lengths = {"a": 12, "b": 10, "c": 7, "d": 2, "e": 14, "f": 11}
    seqs = {
        name: random_tokens(n, vocab, seed=10 + i) for i, (name, n) in enumerate(lengths.items())
    }
    expected = {name: hf_logits(hf, toks) for name, toks in seqs.items()}
    tables: dict[str, list[int]] = {name: [] for name in seqs}

    def chunk(name: str, start: int, end: int, logits: str) -> SeqChunk:
        table = pool.table_for(tables[name], end, BLOCK_SIZE)
        return SeqChunk(seqs[name][start:end], start, table, logits)

    # Step 1: three prefills of different lengths.
    out = runner.forward(
        [
            chunk("a", 0, 10, "none"),
            chunk("b", 0, 5, "last"),
            chunk("e", 0, 12, "none"),
            chunk("f", 0, 7, "all"),
        ]
    )
    _close(out, torch.cat([expected["b"][4:5], expected["f"][0:7]]))
    # Step 2: decode, chunked prefill on a cached prefix, fresh prefills, 1 + k drafts.
    out = runner.forward(
        [
            chunk("a", 10, 11, "last"),
            chunk("b", 5, 9, "all"),
            chunk("c", 0, 6, "last"),
            chunk("d", 0, 1, "last"),
            chunk("e", 12, 13, "none"),
            chunk("f", 7, 10, "all"),
        ]
    )
    want = [
        expected["a"][10:11],
        expected["b"][5:9],
        expected["c"][5:6],
        expected["d"][0:1],
        expected["f"][7:10],
    ]
    _close(out, torch.cat(want))
    # Step 3: every sequence decodes one token, contexts of different lengths.
    ends = {"a": 12, "b": 10, "c": 7, "d": 2, "e": 14, "f": 11}
    out = runner.forward([chunk(n, end - 1, end, "last") for n, end in ends.items()])
    _close(out, torch.cat([expected[n][end - 1 : end] for n, end in ends.items()]))


def test_greedy_generation_matches_transformers(model):
    runner, hf = model
    vocab = runner.arch.vocab_size
    prompts = [random_tokens(n, vocab, seed=20 + n) for n in (6, 11, 3)]
    got = runner_greedy(runner, prompts, 20, BlockPool(runner.num_blocks, seed=5))
    for prompt, tokens in zip(prompts, got, strict=True):
        assert tokens == hf_greedy(hf, prompt, 20)


def test_dynamic_rope_beyond_max_positions(tmp_path):
    path = make_tiny_checkpoint(
        tmp_path,
        "llama",
        with_tokenizer=False,
        max_position_embeddings=16,
        rope_scaling={"rope_type": "dynamic", "factor": 2.0},
    )
    runner = ModelRunner(path)
    runner.allocate_kv_cache(num_blocks=32, block_size=BLOCK_SIZE)
    hf = load_hf_model(path)
    prompt = random_tokens(10, runner.arch.vocab_size, seed=6)
    got = runner_greedy(runner, [prompt], 18, BlockPool(32, seed=6))
    assert got[0] == hf_greedy(hf, prompt, 18)
