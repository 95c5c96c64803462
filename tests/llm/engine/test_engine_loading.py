"""Checkpoint loading: sharded safetensors, dtypes (bf16, fp16 fallback on CPU, explicit
override), tied embeddings, legacy config keys, and clear errors for bad inputs."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from engine_helpers import random_tokens
from llm_fixtures import BOS_ID, EOS_ID, PAD_ID, hf_logits, load_hf_model, make_tiny_checkpoint

from llmserve.core.errors import InvalidArgument, NotFound, Unavailable, Unsupported
from llmserve.llm.engine import ModelRunner, SeqChunk, load_arch_config
from llmserve.llm.engine.attention import FREED_BLOCK


def _prefill_logits(runner: ModelRunner, tokens: list[int]) -> torch.Tensor:
    if runner.kv_cache is None:
        runner.allocate_kv_cache(num_blocks=16, block_size=8)
    table = list(range((len(tokens) + 7) // 8))[::-1]
    return runner.forward([SeqChunk(tokens, 0, table, "all")])


def test_sharded_checkpoint_loads(tmp_path):
    path = make_tiny_checkpoint(tmp_path, "qwen2", max_shard_size="40KB", with_tokenizer=False)
    index = json.loads((path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert not (path / "model.safetensors").exists()
    runner = ModelRunner(path)
    tokens = random_tokens(9, runner.arch.vocab_size, seed=1)
    torch.testing.assert_close(
        _prefill_logits(runner, tokens),
        hf_logits(load_hf_model(path), tokens),
        atol=1e-4,
        rtol=1e-4,
    )


def test_bfloat16_checkpoint_runs_in_bfloat16(tmp_path):
    # dtype "auto" on CPU keeps the bf16 weights under float32 activations (test_quant.py)
    path = make_tiny_checkpoint(tmp_path, "llama", dtype="bfloat16", with_tokenizer=False)
    runner = ModelRunner(path, dtype="bfloat16")
    assert runner.arch.dtype == torch.bfloat16
    assert runner.model.embed.dtype == torch.bfloat16
    assert runner.kv_cache_bytes_per_block(8) == 2 * 2 * 8 * 2 * 16 * 2
    tokens = random_tokens(12, runner.arch.vocab_size, seed=2)
    logits = _prefill_logits(runner, tokens)
    assert logits.dtype == torch.float32
    expected = hf_logits(load_hf_model(path, torch.bfloat16), tokens)
    torch.testing.assert_close(logits, expected, atol=5e-2, rtol=5e-2)


def test_float16_checkpoint_falls_back_to_float32_on_cpu(tmp_path, caplog):
    path = make_tiny_checkpoint(tmp_path, "mistral", dtype="float16", with_tokenizer=False)
    with caplog.at_level(logging.WARNING):
        runner = ModelRunner(path, dtype="auto")
    assert runner.arch.dtype == torch.float32
    assert any("float16" in r.message for r in caplog.records)
    tokens = random_tokens(10, runner.arch.vocab_size, seed=3)
    expected = hf_logits(load_hf_model(path, torch.float32), tokens)
    torch.testing.assert_close(_prefill_logits(runner, tokens), expected, atol=1e-4, rtol=1e-4)


def test_explicit_dtype_overrides_checkpoint(tmp_path):
    path = make_tiny_checkpoint(tmp_path, "llama", dtype="bfloat16", with_tokenizer=False)
    runner = ModelRunner(path, dtype="float32")
    assert runner.arch.dtype == torch.float32
    tokens = random_tokens(7, runner.arch.vocab_size, seed=4)
    expected = hf_logits(load_hf_model(path, torch.float32), tokens)
    torch.testing.assert_close(_prefill_logits(runner, tokens), expected, atol=1e-4, rtol=1e-4)
    assert ModelRunner(path, dtype="bfloat16").arch.dtype == torch.bfloat16
    with pytest.raises(InvalidArgument, match="dtype"):
        ModelRunner(path, dtype="int8")


def test_tied_embeddings_share_the_embedding_matrix(tmp_path):
    path = make_tiny_checkpoint(tmp_path, "qwen2", tie_word_embeddings=True, with_tokenizer=False)
    runner = ModelRunner(path)
    assert runner.model.lm_head is runner.model.embed


def test_arch_config_fields_and_tokens(tmp_path):
    path = make_tiny_checkpoint(tmp_path, "llama", num_kv_heads=2, with_tokenizer=True)
    assert (path / "tokenizer.json").is_file()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (BOS_ID, EOS_ID, PAD_ID)
    ids = tok("Hello world, the fox!").input_ids
    assert max(ids) < 320 and tok.decode(ids) == "Hello world, the fox!"
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "<s><|user|>\nhi</s>\n<|assistant|>\n"
    arch = ModelRunner(path).arch
    assert (arch.num_layers, arch.num_heads, arch.num_kv_heads, arch.head_dim) == (2, 4, 2, 16)
    assert (arch.hidden_size, arch.vocab_size) == (64, 320)
    assert arch.eos_token_ids == [EOS_ID]
    assert (arch.bos_token_id, arch.pad_token_id) == (BOS_ID, PAD_ID)
    assert arch.dtype == torch.float32 and arch.device == "cpu"


def test_legacy_config_keys(tmp_path):
    path = make_tiny_checkpoint(
        tmp_path,
        "llama",
        with_tokenizer=False,
        rope_scaling={"rope_type": "linear", "factor": 2.0},
        rope_theta=500.0,
    )
    cfg = json.loads((path / "config.json").read_text())
    params = cfg.pop("rope_parameters")
    cfg["rope_theta"] = params.pop("rope_theta")
    cfg["rope_scaling"] = {"type": params.pop("rope_type"), **params}
    cfg["torch_dtype"] = cfg.pop("dtype")
    cfg["eos_token_id"] = [EOS_ID, 5]
    (path / "config.json").write_text(json.dumps(cfg))
    (path / "generation_config.json").unlink()
    arch = load_arch_config(path)
    assert arch.rope_theta == 500.0
    assert arch.rope_parameters == {"rope_type": "linear", "factor": 2.0}
    assert arch.checkpoint_dtype == torch.float32
    assert arch.eos_token_ids == [EOS_ID, 5]


def test_loading_errors(tmp_path):
    with pytest.raises(NotFound):
        ModelRunner(tmp_path / "missing")
    path = make_tiny_checkpoint(tmp_path / "m", "llama", with_tokenizer=False)
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    with pytest.raises(Unsupported, match="gpt2"):
        ModelRunner(path)
    engine = tmp_path / "trtllm_engine"  # what trtllm-build writes
    engine.mkdir()
    (engine / "config.json").write_text(json.dumps(
        {"version": "0.12.0", "pretrained_config": {"architecture": "LlamaForCausalLM"},
         "build_config": {"max_batch_size": 8}}))
    (engine / "rank0.engine").write_bytes(b"")
    with pytest.raises(Unsupported, match="TensorRT-LLM engine folder.*Hugging Face"):
        ModelRunner(engine)
    (path / "config.json").write_text(json.dumps(cfg))
    (path / "model.safetensors").unlink()
    with pytest.raises(NotFound, match="safetensors"):
        ModelRunner(path)


def test_forward_validates_chunks(tmp_path):
    runner = ModelRunner(make_tiny_checkpoint(tmp_path, "llama", with_tokenizer=False))
    with pytest.raises(Unavailable, match="allocate_kv_cache"):
        runner.forward([SeqChunk([5], 0, [0], "last")])
    runner.allocate_kv_cache(num_blocks=4, block_size=4)
    bad = [
        SeqChunk([], 0, [0], "last"),
        SeqChunk([5, 6, 7, 8, 9], 0, [0], "last"),  # table too short
        SeqChunk([5], 0, [4], "last"),  # block out of range
        SeqChunk([5000], 0, [0], "last"),  # token out of vocab
        SeqChunk([5], 0, [0], "first"),
        SeqChunk([5], -1, [0], "last"),
    ]
    for chunk in bad:
        with pytest.raises(InvalidArgument):
            runner.forward([chunk])
    empty = runner.forward([])
    assert empty.shape == (0, runner.arch.vocab_size) and empty.dtype == torch.float32


def test_out_of_range_ids_are_invalid_argument_on_every_path(tmp_path):
    # The runner scans no ids on the CPU path: torch's embedding and index ops and the C
    # attention kernels raise IndexError, and forward() names the chunk. Each case reaches
    # a different one: the decode kernel (a context block), index_copy_ (the new token's
    # slot), the embedding (a token), the prefill kernel (a cached prefix of a long chunk).
    runner = ModelRunner(make_tiny_checkpoint(tmp_path, "llama", with_tokenizer=False))
    runner.allocate_kv_cache(num_blocks=8, block_size=4)
    assert runner._attention_kernels
    good = SeqChunk([5], 0, [0], "last")
    # (-1 is FREED_BLOCK: a block behind an attention window, allowed where never read)
    cases = [  # (chunk, what the runner reports, the IndexError that caught it)
        (SeqChunk([5], 5, [8, 1], "last"), "block id", "paged_decode_f32"),
        (SeqChunk([5], 5, [1, -2], "last"), "block id", "index_copy_"),
        (SeqChunk([5, 320], 0, [2], "last"), "token id", "index out of range"),
        (SeqChunk([5], 4, [1, FREED_BLOCK], "last"), "the new tokens' blocks", "index_copy_"),
        (SeqChunk(list(range(5, 25)), 4, [-2, 2, 3, 4, 5, 6], "last"), "block id",
         "paged_prefill_f32"),
    ]
    for bad, what, source in cases:
        with pytest.raises(InvalidArgument, match=f"chunk 1: {what}") as err:
            runner.forward([good, bad])
        assert source in str(err.value.__context__)
    assert runner.forward([good]).shape == (1, runner.arch.vocab_size)  # still serving
