"""The C decode- and prefill-attention kernels that read the paged KV cache in place
equal scaled_dot_product_attention over each sequence's gathered keys, and the engine
gives the same logits with and without them; so do the fused RMSNorm, SiLU * up and RoPE
row kernels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from engine_helpers import BlockPool, random_tokens

from llmserve.llm.engine import ModelRunner, SeqChunk
from llmserve.llm.engine.cpu_kernels import (
    kernels,
    paged_decode,
    paged_prefill,
    rms_norm,
    rope,
    silu_mul,
)

pytestmark = pytest.mark.skipif(kernels() is None, reason="no C compiler for the CPU kernels")


def _reference(q, k, v, tables, lens, scale, window):
    block_size, num_kv, head_dim = k.shape[1:]
    group = q.shape[1] // num_kv
    outs = []
    for b in range(q.shape[0]):
        n = int(lens[b])
        keys = k[tables[b]].reshape(-1, num_kv, head_dim)[:n]
        vals = v[tables[b]].reshape(-1, num_kv, head_dim)[:n]
        start = max(0, n - window) if window else 0
        keys, vals = keys[start:].transpose(0, 1), vals[start:].transpose(0, 1)
        o = F.scaled_dot_product_attention(q[b].view(num_kv, group, head_dim), keys, vals,
                                           scale=scale)
        outs.append(o.reshape(-1, head_dim))
    return torch.stack(outs)


@pytest.mark.parametrize("batch", [1, 3, 40])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (6, 2), (8, 1)])
@pytest.mark.parametrize("window", [None, 5])
def test_kernel_matches_sdpa(batch, heads, kv_heads, window):
    check_kernel(batch, heads, kv_heads, window, head_dim=16)


@pytest.mark.parametrize("head_dim", [64, 128])  # the sizes with specialised code
def test_kernel_specialised_head_sizes(head_dim):
    check_kernel(12, 6, 2, None, head_dim)
    check_kernel(2, 6, 2, 7, head_dim)


def check_kernel(batch, heads, kv_heads, window, head_dim):
    gen = torch.Generator().manual_seed(batch * 100 + heads)
    block_size, num_blocks = 4, 400
    k = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=gen)
    v = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=gen)
    lens = torch.randint(1, 30, (batch,), generator=gen)
    width = int((lens.max() + block_size - 1) // block_size)
    perm = torch.randperm(num_blocks, generator=gen)
    tables = perm[: batch * width].view(batch, width).contiguous()
    # q as the engine passes it: a slice of a wider [T, heads + kv_heads, D] tensor
    qk = torch.randn(batch, heads + kv_heads, head_dim, generator=gen)
    q = qk[:, :heads]
    out = paged_decode(q, k, v, tables, lens, head_dim**-0.5, window)
    ref = _reference(q, k, v, tables, lens, head_dim**-0.5, window)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sink", [1, 3, 6])
def test_kernel_keeps_sink_tokens_and_skips_freed_blocks(sink):
    """Keys [0, sink) and the last window - sink; the blocks between hold NaN, as a
    freed (and reused) block may: the kernel must never read them."""
    gen = torch.Generator().manual_seed(sink)
    block_size, kv_heads, heads, head_dim, window = 4, 2, 4, 16, 9
    lens = torch.tensor([40, 9, 10, 27, 3])
    width = 10
    k = torch.randn(64, block_size, kv_heads, head_dim, generator=gen)
    v = torch.randn(64, block_size, kv_heads, head_dim, generator=gen)
    tables = torch.arange(1, 1 + len(lens) * width).view(len(lens), width).contiguous()
    q = torch.randn(len(lens), heads, head_dim, generator=gen)
    expected = []
    for b, n in enumerate(lens.tolist()):
        keys = torch.arange(n)
        seen = (keys >= n - (window - sink)) | (keys < sink)
        for blk in range(width):  # poison every block holding no attended key
            span = keys[blk * block_size : (blk + 1) * block_size]
            if len(span) and not seen[span].any():
                k[tables[b, blk]] = float("nan")
                v[tables[b, blk]] = float("nan")
        ks = k[tables[b]].reshape(-1, kv_heads, head_dim)[:n][seen].transpose(0, 1)
        vs = v[tables[b]].reshape(-1, kv_heads, head_dim)[:n][seen].transpose(0, 1)
        o = F.scaled_dot_product_attention(q[b].view(kv_heads, 2, head_dim), ks, vs,
                                           scale=head_dim**-0.5)
        expected.append(o.reshape(-1, head_dim))
    out = paged_decode(q, k, v, tables, lens, head_dim**-0.5, window, sink)
    torch.testing.assert_close(out, torch.stack(expected), atol=1e-5, rtol=1e-5)


def test_kernel_rejects_heads_that_do_not_divide():
    k = torch.zeros(2, 4, 3, 8)
    with pytest.raises(ValueError, match="multiple of KV heads"):
        paged_decode(torch.zeros(1, 4, 8), k, k.clone(), torch.zeros(1, 1, dtype=torch.long),
                     torch.ones(1, dtype=torch.long), 1.0, None)


@pytest.mark.parametrize("table,length,match", [
    ([0, 8], 6, "block id"),  # 8 blocks in the cache: ids 0-7
    ([-1, 0], 6, "block id"),
    ([0, 1], 9, "context length"),  # wider than the 2-block table
    ([0, 1], 0, "context length"),
])
def test_kernel_rejects_ids_out_of_range(table, length, match):
    k = torch.randn(8, 4, 2, 8)
    with pytest.raises(IndexError, match=match):
        paged_decode(torch.randn(1, 4, 8), k, k.clone(), torch.tensor([table]),
                     torch.tensor([length]), 1.0, None)


def test_kernel_checks_only_the_blocks_a_window_reads():
    # 16 keys, a 4-key window: only the last block is read, so the others may be
    # anything (a cache that frees blocks behind the window marks them -1); with 2 sink
    # tokens the first block is read too, and then must be in the cache.
    gen = torch.Generator().manual_seed(3)
    k, v = torch.randn(8, 4, 2, 8, generator=gen), torch.randn(8, 4, 2, 8, generator=gen)
    q, lens = torch.randn(1, 4, 8, generator=gen), torch.tensor([16])
    out = paged_decode(q, k, v, torch.tensor([[-1, 99, -1, 5]]), lens, 0.3, 4)
    ref = _reference(q, k, v, torch.tensor([[0, 0, 0, 5]]), lens, 0.3, 4)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    paged_decode(q, k, v, torch.tensor([[3, -1, 99, 5]]), lens, 0.3, 4, sink=2)
    with pytest.raises(IndexError, match="block id"):
        paged_decode(q, k, v, torch.tensor([[-1, 1, 2, 5]]), lens, 0.3, 4, sink=2)
    with pytest.raises(ValueError, match="sink < window"):
        paged_decode(q, k, v, torch.tensor([[0, 1, 2, 5]]), lens, 0.3, 4, sink=4)


def _prefill_reference(q, k, v, table, start, n, row, scale, window, sink):
    """SDPA over chunk's gathered keys with the engine's causal / window / sink mask."""
    block_size, num_kv, head_dim = k.shape[1:]
    ctx = start + n
    keys = k[table].reshape(-1, num_kv, head_dim)[:ctx].transpose(0, 1)
    vals = v[table].reshape(-1, num_kv, head_dim)[:ctx].transpose(0, 1)
    key_pos, query_pos = torch.arange(ctx)[None, :], torch.arange(start, ctx)[:, None]
    mask = key_pos <= query_pos
    if window:
        mask &= (key_pos > query_pos - (window - sink)) | (key_pos < sink)
    qs = q[row : row + n].transpose(0, 1)
    o = F.scaled_dot_product_attention(qs, keys, vals, attn_mask=mask, scale=scale,
                                       enable_gqa=True)
    return o.transpose(0, 1)


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (6, 2), (8, 1), (40, 1)])
@pytest.mark.parametrize("window,sink", [(None, 0), (7, 0), (9, 3)])
@pytest.mark.parametrize("block_size", [4, 64])  # blocks smaller and larger than a tile
def test_prefill_kernel_matches_sdpa(heads, kv_heads, window, sink, block_size):
    check_prefill(heads, kv_heads, window, sink, block_size, head_dim=16)


@pytest.mark.parametrize("head_dim", [24, 64, 128])  # unvectorised P V; specialised sizes
def test_prefill_kernel_head_sizes(head_dim):
    check_prefill(6, 2, None, 0, 16, head_dim)
    check_prefill(4, 2, 11, 2, 8, head_dim)


def check_prefill(heads, kv_heads, window, sink, block_size, head_dim):
    gen = torch.Generator().manual_seed(heads * 7 + block_size + head_dim)
    num_blocks = 600 // block_size + 8
    k = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=gen)
    v = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=gen)
    # (start, length): a fresh prompt, chunks after a cached prefix, a prompt tail
    # longer than a key tile, and one shorter than a row tile
    spans = [(0, 37), (9, 20), (50, 3), (0, 70), (33, 1)]
    rows, row = [], 2  # rows 0-1 and the gap after each chunk belong to no chunk
    for _, n in spans:
        rows.append(row)
        row += n + 1
    width = max((s + n + block_size - 1) // block_size for s, n in spans)
    perm = torch.randperm(num_blocks, generator=gen)
    tables = perm[: len(spans) * width].view(len(spans), width).contiguous()
    qkv = torch.randn(row, heads + 2 * kv_heads, head_dim, generator=gen)
    q = qkv[:, :heads]  # a slice of a wider tensor, as the engine passes it
    out = torch.full((row, heads, head_dim), 7.0)
    scale = head_dim**-0.5
    paged_prefill(out, q, k, v, tables, torch.tensor([s for s, _ in spans]),
                  torch.tensor([n for _, n in spans]), torch.tensor(rows), scale, window, sink)
    covered = torch.zeros(row, dtype=torch.bool)
    for c, (start, n) in enumerate(spans):
        ref = _prefill_reference(q, k, v, tables[c], start, n, rows[c], scale, window, sink)
        torch.testing.assert_close(out[rows[c] : rows[c] + n], ref, atol=1e-5, rtol=1e-5)
        covered[rows[c] : rows[c] + n] = True
    assert (out[~covered] == 7.0).all()  # rows outside every chunk are left alone


def test_prefill_kernel_never_reads_blocks_outside_the_window():
    """The blocks no query of the chunk attends hold NaN (freed and reused, or marked -1
    in the table): the result is finite and equal to the reference."""
    gen = torch.Generator().manual_seed(5)
    block_size, window, sink, start, n = 4, 6, 2, 20, 9
    k, v = torch.randn(16, block_size, 2, 16, generator=gen), torch.randn(16, 4, 2, 16,
                                                                          generator=gen)
    table = torch.arange(1, 9)  # keys 0-31 of which 0-28 exist
    q = torch.randn(n, 4, 16, generator=gen)
    ref = _prefill_reference(q, k, v, table, start, n, 0, 0.25, window, sink)
    # the first query (position 20) attends 0, 1 and 17-20: blocks 0, 4 and 5 on
    for blk in (1, 2, 3):
        k[table[blk]] = v[table[blk]] = float("nan")
    freed = table.clone()
    freed[1:4] = -1
    for tab in (table, freed):
        out = torch.empty(n, 4, 16)
        paged_prefill(out, q, k, v, tab[None].contiguous(), torch.tensor([start]),
                      torch.tensor([n]), torch.tensor([0]), 0.25, window, sink)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("table,start,n,row,match", [
    ([0, 8], 2, 4, 0, "block id"),  # 8 blocks in the cache: ids 0-7
    ([0, -1], 2, 4, 0, "block id"),
    ([0, 1], 6, 3, 0, "context length"),  # 9 keys, wider than the 2-block table
    ([0, 1], 0, 0, 0, "context length"),
    ([0, 1], 0, 4, 3, "rows outside q"),  # rows 3-6 of a 5-row q
])
def test_prefill_kernel_rejects_ids_out_of_range(table, start, n, row, match):
    k = torch.randn(8, 4, 2, 8)
    out = torch.empty(5, 4, 8)
    with pytest.raises(IndexError, match=match):
        paged_prefill(out, torch.randn(5, 4, 8), k, k.clone(), torch.tensor([table]),
                      torch.tensor([start]), torch.tensor([n]), torch.tensor([row]), 1.0,
                      None)
    with pytest.raises(ValueError, match="sink < window"):
        paged_prefill(out, torch.randn(5, 4, 8), k, k.clone(), torch.tensor([[0, 1]]),
                      torch.tensor([0]), torch.tensor([4]), torch.tensor([0]), 1.0, 3, 3)


def test_kernels_are_built_without_finite_math():
    from llmserve.llm.engine import cpu_kernels

    # -ffast-math implies -ffinite-math-only, under which the softmax's -INFINITY start
    # value is undefined behaviour
    assert not any("fast-math" in f or "finite-math" in f for f in cpu_kernels._FLAGS)
    assert "-fassociative-math" in cpu_kernels._FLAGS  # what keeps the dot products fast


@pytest.mark.parametrize("family", ["llama", "mistral_window"])
def test_engine_logits_same_with_and_without_kernel(tmp_path, family):
    from llm_fixtures import make_tiny_checkpoint

    kwargs = {"sliding_window": 6} if family == "mistral_window" else {}
    path = make_tiny_checkpoint(tmp_path, family.split("_")[0], **kwargs)
    runner = ModelRunner(path)
    runner.allocate_kv_cache(64, 4)
    assert runner._attention_kernels
    vocab = runner.arch.vocab_size
    prompts = [random_tokens(n, vocab, seed=n) for n in (3, 11, 17)]
    pool = BlockPool(64)
    tables = [pool.table_for([], len(p) + 3, 4) for p in prompts]
    runner.forward([SeqChunk(p, 0, t, "none") for p, t in zip(prompts, tables, strict=True)])
    # decodes and a 3-token chunk over a cached prefix (a speculative verification):
    # the decode kernel takes the short chunk one row per token; a 20-token chunk over
    # another cached prefix and a fresh 19-token prompt go to the prefill kernel
    long_table = pool.table_for([], 40, 4)
    runner.forward([SeqChunk(prompts[2], 0, long_table, "none")])
    step = [SeqChunk([5], len(prompts[0]), tables[0], "last"),
            SeqChunk([5, 9, 11], len(prompts[1]), tables[1], "all"),
            SeqChunk(random_tokens(20, vocab, seed=1), len(prompts[2]), long_table, "all"),
            SeqChunk(random_tokens(19, vocab, seed=2), 0, pool.table_for([], 19, 4), "all")]
    with_kernel = runner.forward(step)
    assert with_kernel.shape[0] == 1 + 3 + 20 + 19
    runner._attention_kernels = False
    without = runner.forward(step)
    torch.testing.assert_close(with_kernel, without, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rows", [1, 3, 200])
def test_rms_norm_kernel_with_and_without_the_residual_add(rows):
    torch.manual_seed(rows)
    x, delta, weight = torch.randn(rows, 96), torch.randn(rows, 96), torch.randn(96)
    expected = F.rms_norm(x, (96,), weight, 1e-6)
    torch.testing.assert_close(rms_norm(x.clone(), weight, 1e-6), expected)
    stream = x.clone()
    out = rms_norm(stream, weight, 1e-6, delta)
    torch.testing.assert_close(stream, x + delta)  # the residual stream, updated in place
    torch.testing.assert_close(out, F.rms_norm(x + delta, (96,), weight, 1e-6))


@pytest.mark.parametrize("rows", [1, 5, 300])
def test_silu_mul_kernel(rows):
    gate_up = torch.randn(rows, 2 * 120) * 4
    gate, up = gate_up.chunk(2, dim=-1)
    torch.testing.assert_close(silu_mul(gate_up), F.silu(gate) * up)


def test_engine_logits_same_with_and_without_row_kernels(tmp_path):
    from llm_fixtures import make_tiny_checkpoint

    runner = ModelRunner(make_tiny_checkpoint(tmp_path, "llama"))
    runner.allocate_kv_cache(64, 4)
    model = runner.model
    assert model.row_kernels and model.fused_silu
    prompts = [random_tokens(n, runner.arch.vocab_size, seed=n) for n in (5, 13)]
    pool = BlockPool(64)
    tables = [pool.table_for([], len(p) + 1, 4) for p in prompts]
    chunks = [SeqChunk(p, 0, t, "all") for p, t in zip(prompts, tables, strict=True)]
    fused = runner.forward(chunks)
    model.row_kernels = model.fused_silu = False
    plain = runner.forward(chunks)
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rows", [1, 7, 300])
def test_rope_kernel_reads_a_column_slice_of_qkv(rows):
    from llmserve.llm.engine.rope import apply_rope

    heads, kv, head_dim = 4, 2, 16
    qkv = torch.randn(rows, (heads + 2 * kv) * head_dim)
    qk = qkv[:, : (heads + kv) * head_dim].view(rows, heads + kv, head_dim)  # not contiguous
    angles = torch.rand(rows, head_dim // 2) * 6
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    out = rope(qk, cos, sin)
    assert out.is_contiguous()
    torch.testing.assert_close(out, apply_rope(qk, cos, sin))
