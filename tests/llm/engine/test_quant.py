"""Weight-only formats on CPU. A bf16 checkpoint runs with float32 activations over its
bf16 weights; `weight_only_precision: int8` quantises the decoder layers' GEMM weights
per output channel. Stated tolerances against transformers, on the tiny models:
- bf16 weights: logits within 5e-2 (max abs) of transformers in bf16, and of
  transformers in float32 over the same bf16 weights (measured 0.03-0.04 for both: the
  activations are rounded to bf16 at each GEMM, as in bf16 compute);
- int8 weights: logits within 0.2 max abs and 5% relative (L2) of transformers in
  float32 (measured 0.06-0.09 and ~2%), the first greedy token equal for every prompt
  and at least 75% of 64 greedy tokens equal position by position (measured 86-97%).
"""

from __future__ import annotations

import pytest
import torch
from engine_helpers import BlockPool, random_tokens, runner_greedy
from llm_fixtures import hf_greedy, hf_logits, load_hf_model, make_tiny_checkpoint

from llmserve.core.errors import InvalidArgument, Unsupported
from llmserve.llm.engine import ModelRunner, SeqChunk, load_arch_config
from llmserve.llm.engine.cpu_kernels import kernels
from llmserve.llm.engine.quant import (
    Int8Weight,
    bf16_weights_supported,
    int8_supported,
    parse_weight_only_precision,
    resolve_weight_formats,
)


def _logits(runner: ModelRunner, tokens: list[int]) -> torch.Tensor:
    runner.allocate_kv_cache(num_blocks=16, block_size=8)
    table = list(range((len(tokens) + 7) // 8))[::-1]
    return runner.forward([SeqChunk(tokens, 0, table, "all")])


@pytest.mark.skipif(not bf16_weights_supported(), reason="no oneDNN bf16 GEMM on this CPU")
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_bf16_checkpoint_keeps_bf16_weights_under_float32_activations(tmp_path, family):
    path = make_tiny_checkpoint(tmp_path, family, dtype="bfloat16", with_tokenizer=False)
    runner = ModelRunner(path)
    arch = runner.arch
    assert (arch.dtype, arch.weight_dtype, arch.weight_only_precision) == (
        torch.float32, torch.bfloat16, None)
    kernels_built = kernels() is not None
    assert runner._attention_kernels == runner.model.row_kernels == kernels_built  # float32 kernels
    tokens = random_tokens(20, arch.vocab_size, seed=5)
    logits = _logits(runner, tokens)
    for reference_dtype in (torch.bfloat16, torch.float32):
        expected = hf_logits(load_hf_model(path, reference_dtype), tokens)
        torch.testing.assert_close(logits, expected, atol=5e-2, rtol=0)


@pytest.mark.skipif(not int8_supported(), reason="torch has no _weight_int8pack_mm")
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_int8_weights_stay_close_to_transformers_float32(tmp_path, family):
    path = make_tiny_checkpoint(tmp_path, family, with_tokenizer=False)
    runner = ModelRunner(path, weight_only_precision="int8")
    assert runner.arch.weight_only_precision == "int8"
    assert type(runner.model.layers[0].gate_up) is Int8Weight
    assert type(runner.model.head) is not Int8Weight  # the LM head is not quantised
    hf = load_hf_model(path)
    vocab = runner.arch.vocab_size
    tokens = random_tokens(24, vocab, seed=1)
    logits, expected = _logits(runner, tokens), hf_logits(hf, tokens)
    assert (logits - expected).abs().max() < 0.2
    assert (logits - expected).norm() / expected.norm() < 0.05

    prompts = [random_tokens(n, vocab, seed=10 + n) for n in (5, 9, 14, 20)]
    runner.allocate_kv_cache(num_blocks=64, block_size=4)
    ours = runner_greedy(runner, prompts, 16, BlockPool(64))
    theirs = [hf_greedy(hf, p, 16) for p in prompts]
    assert [o[0] for o in ours] == [t[0] for t in theirs]
    same = sum(a == b for o, t in zip(ours, theirs, strict=True) for a, b in zip(o, t, strict=True))
    assert same >= 0.75 * 64, f"{same}/64 greedy tokens agree"


def test_int8_quantisation_error_is_half_a_step():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(48, 96, generator=gen) * torch.rand(48, 1, generator=gen)
    w[5] = 0.0  # an all-zero row must not divide by zero
    q = Int8Weight(w)
    assert q.qweight.dtype == torch.int8 and q.qweight.abs().max() <= 127
    step = q.scales.float()[:, None]
    assert ((q.dequantize() - w).abs() <= step / 2 + 1e-6).all()
    assert torch.equal(q.dequantize()[5], torch.zeros(96))
    if int8_supported():
        x, bias = torch.randn(3, 96, generator=gen), torch.randn(48, generator=gen)
        y = q.linear(x, bias)
        assert y.dtype == torch.float32
        expected = x.bfloat16().float() @ q.dequantize().t() + bias
        torch.testing.assert_close(y, expected, atol=2e-2, rtol=1e-2)  # a bf16 output


@pytest.mark.skipif(not int8_supported(), reason="no torch._weight_int8pack_mm")
def test_int8_skips_weights_whose_input_features_the_kernel_cannot_take():
    from llmserve.llm.engine.linear import Linears

    linears = Linears(torch.device("cpu"), torch.float32, quantize="int8")
    w = torch.randn(32, 24)  # K = 24: torch's int8 GEMM would crash on it
    packed = linears.pack(w)
    assert not isinstance(packed, Int8Weight) and linears.int8_skipped == 1
    x = torch.randn(3, 24)
    torch.testing.assert_close(linears.fn(x, packed, None), x @ w.t())
    assert isinstance(linears.pack(torch.randn(32, 48)), Int8Weight)


def test_weight_only_settings_and_their_errors(tmp_path):
    assert parse_weight_only_precision(None) is None
    assert parse_weight_only_precision("") is None and parse_weight_only_precision("none") is None
    assert parse_weight_only_precision("INT8") == "int8"
    with pytest.raises(Unsupported, match="int4"):
        parse_weight_only_precision("int4_awq")
    with pytest.raises(InvalidArgument, match="weight_only_precision"):
        parse_weight_only_precision("int7")
    arch = load_arch_config(make_tiny_checkpoint(tmp_path, "llama", with_tokenizer=False))
    with pytest.raises(Unsupported, match="CPU only"):
        resolve_weight_formats("auto", arch, "cuda", "int8")
    with pytest.raises(InvalidArgument, match="float32 activations"):
        resolve_weight_formats("bfloat16", arch, "cpu", "int8")
    assert resolve_weight_formats("auto", arch, "cpu", None) == (torch.float32, None, None)
    arch.checkpoint_dtype = torch.bfloat16
    # an explicit dtype is followed: all-bf16 compute, as on CUDA
    assert resolve_weight_formats("bfloat16", arch, "cpu", None) == (torch.bfloat16, None, None)
    assert resolve_weight_formats("auto", arch, "cuda", None) == (torch.bfloat16, None, None)
