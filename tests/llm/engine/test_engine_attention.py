"""Step metadata: token order, cache slots, decode grouping by context length, masks
for prefixes and sliding windows, and logits row selection."""

from __future__ import annotations

import torch

from llmserve.llm.engine import SeqChunk
from llmserve.llm.engine.attention import MAX_DECODE_GROUPS, build_step

CPU = torch.device("cpu")


def test_slots_follow_block_tables_and_decodes_come_first():
    chunks = [
        SeqChunk([7, 8, 9], 2, [5, 3], "all"),  # positions 2..4 -> blocks 5, 5, 3
        SeqChunk([4], 5, [1, 0], "last"),  # position 5 -> block 0 offset 1
    ]
    meta = build_step(chunks, 4, {None}, CPU)
    assert meta.input_ids.tolist() == [4, 7, 8, 9]
    assert meta.positions.tolist() == [5, 2, 3, 4]
    assert meta.slot_mapping.tolist() == [0 * 4 + 1, 5 * 4 + 2, 5 * 4 + 3, 3 * 4 + 0]
    assert meta.chunk_rows == [1, 0]
    assert meta.logit_rows is not None and meta.logit_rows.tolist() == [1, 2, 3, 0]
    (seq,) = meta.prefills
    assert not seq.fresh and seq.blocks.tolist() == [5, 3]
    mask = seq.masks[None]
    assert mask.shape == (3, 5)
    assert mask[0].tolist() == [True, True, True, False, False]
    assert mask[2].all()


def test_decode_groups_bound_padding():
    contexts = [400, 390, 150, 120, 40, 8, 3, 1]
    chunks = [SeqChunk([5], c - 1, list(range(c // 16 + 1)), "last") for c in contexts]
    meta = build_step(chunks, 16, {None}, CPU)
    sizes = [(g.count, g.max_blocks) for g in meta.decode_groups]
    assert sizes == [(2, 25), (2, 10), (1, 3), (3, 1)]
    third = meta.decode_groups[2]
    assert third.masks[None].shape == (1, 1, 1, 48)
    assert third.masks[None][:, 0, 0].sum(-1).tolist() == [40]
    assert meta.logit_rows is None  # contexts already longest first
    # Past MAX_DECODE_GROUPS the shortest ones share the last group.
    blocks = [100, 40, 15, 6, 2, 1]
    chunks = [SeqChunk([5], b * 16 - 1, list(range(b)), "last") for b in blocks[::-1]]
    meta = build_step(chunks, 16, {None}, CPU)
    sizes = [(g.count, g.max_blocks) for g in meta.decode_groups]
    assert sizes == [(1, 100), (1, 40), (1, 15), (3, 6)]
    assert len(sizes) == MAX_DECODE_GROUPS
    assert meta.decode_groups[0].masks[None] is None  # full blocks, nothing to mask
    assert meta.logit_rows.tolist() == [5, 4, 3, 2, 1, 0]


def test_sliding_window_masks_and_fresh_prefill():
    chunks = [SeqChunk([1, 2, 3, 4, 5], 0, [0, 1], "none"), SeqChunk([6], 7, [2, 3], "last")]
    meta = build_step(chunks, 4, {None, 3}, CPU)
    seq = meta.prefills[0]
    assert seq.fresh and seq.masks[None] is None  # plain causal
    window = seq.masks[3]
    assert window[4].tolist() == [False, False, True, True, True]
    decode_mask = meta.decode_groups[0].masks[3][0, 0, 0]
    assert decode_mask.tolist() == [False] * 5 + [True] * 3
    assert meta.num_logit_rows == 1 and meta.logit_rows.tolist() == [0]


def test_sink_masks_and_freed_table_entries():
    """With sink tokens, windowed masks keep the first tokens; freed table entries
    (FREED_BLOCK) are gathered as the sequence's own last block and masked out."""
    from llmserve.llm.engine.attention import FREED_BLOCK

    chunks = [SeqChunk([1, 2], 10, [4, FREED_BLOCK, 6], "all"),
              SeqChunk([3], 9, [7, FREED_BLOCK, 8], "last")]
    meta = build_step(chunks, 4, {None, 5}, CPU, sink=2)
    assert meta.sink == 2
    seq = meta.prefills[0]
    assert seq.blocks.tolist() == [4, 6, 6]
    # query at 11 sees keys 0, 1 (sinks) and the last 3: 9, 10, 11
    assert seq.masks[5][1].nonzero().flatten().tolist() == [0, 1, 9, 10, 11]
    assert seq.masks[None][1].all()
    group = meta.decode_groups[0]
    assert group.blocks.tolist() == [7, 8, 8]
    assert group.masks[5][0, 0, 0].nonzero().flatten().tolist() == [0, 1, 7, 8, 9]
    kernel = build_step(chunks, 4, {None, 5}, CPU, attention_kernels=True, sink=2)
    assert kernel.decode_tables.block_tables.tolist() == [[4, 6, 6], [4, 6, 6], [7, 8, 8]]


def test_kernel_step_describes_long_chunks_by_table_start_and_rows():
    """With the attention kernels, chunks over KERNEL_MAX_CHUNK tokens are described for
    the prefill kernel (no masks, no gathered blocks); freed entries read as the
    sequence's own last block, short tables are padded."""
    from llmserve.llm.engine.attention import FREED_BLOCK, KERNEL_MAX_CHUNK

    long = KERNEL_MAX_CHUNK + 4
    chunks = [SeqChunk(list(range(long)), 6, [3, FREED_BLOCK, 9, 4, 5, 8, 2], "last"),
              SeqChunk([7], 4, [1, 0], "last"),
              SeqChunk(list(range(long)), 0, [6, 7, 10, 11, 12], "none")]
    meta = build_step(chunks, 4, {None, 8}, CPU, attention_kernels=True, sink=2)
    assert meta.prefills == [] and meta.num_decode == 1
    pre = meta.prefill_tables
    assert pre.block_tables.tolist() == [[3, 2, 9, 4, 5, 8, 2], [6, 7, 10, 11, 12, 0, 0]]
    assert pre.starts.tolist() == [6, 0] and pre.lens.tolist() == [long, long]
    assert pre.rows.tolist() == [1, 1 + long]  # after the decode row, in chunk order
    assert meta.chunk_rows == [1, 0, 1 + long]
    plain = build_step(chunks, 4, {None, 8}, CPU, sink=2)
    assert plain.prefill_tables is None and len(plain.prefills) == 2
