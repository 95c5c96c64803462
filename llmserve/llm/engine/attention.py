"""Paged attention over the KV cache: the per-step metadata (token order, slots, block
tables, masks) built once per forward, and the per-layer attention that writes the new
K/V into their slots and attends over each sequence's cached context."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .cpu_kernels import paged_decode, paged_prefill
from .kv_cache import KVCache

# A block table entry for a block freed because it fell out of every layer's attention
# window (and holds no sink token): never read, its position in the table kept.
FREED_BLOCK = -1


@dataclass(slots=True)
class SeqChunk:
    """One sequence's share of a step (the B -> C contract)."""

    token_ids: list[int]  # tokens to run: a prefill chunk, 1 decode token, or 1 + k drafts
    start_pos: int  # tokens of this sequence already in the KV cache
    block_table: list[int]  # physical blocks covering [0, start_pos + len(token_ids))
    # (FREED_BLOCK entries: blocks outside the attention window, never read)
    logits: str = "last"  # "last" | "all" | "none": which rows need logits
    lora_task_id: int | None = None  # LoRA adapter applied to this chunk's tokens
    # p-tuning: [rows, hidden]; token id vocab_size + i embeds as row i
    prompt_table: torch.Tensor | None = None


@dataclass(slots=True)
class PrefillSeq:
    """A multi-token chunk, attended on its own."""

    offset: int  # first row in the step's token stream
    length: int  # tokens in this chunk
    context: int  # start_pos + length: keys attended by the last token
    fresh: bool  # start_pos == 0: its keys are exactly this step's new keys
    blocks: torch.Tensor | None  # [ceil(context / block_size)] block ids (None if fresh)
    masks: dict[int | None, torch.Tensor | None] = field(default_factory=dict)
    # window -> [length, context] bool (True = attend); None value = plain causal


@dataclass(slots=True)
class DecodeGroup:
    """Single-token chunks of similar context length, attended as one padded batch."""

    offset: int  # first row in the step's token stream
    count: int  # sequences (= rows) in the group
    max_blocks: int  # blocks of the longest context; shorter ones are padded to it
    blocks: torch.Tensor  # [count * max_blocks] flattened, padded block tables
    masks: dict[int | None, torch.Tensor | None]  # window -> [count, 1, 1, keys] or None


@dataclass(slots=True)
class DecodeTables:
    """The short chunks as one row per token, for the in-place paged decode kernel."""

    block_tables: torch.Tensor  # [count, max_blocks] int64, short tables padded with 0
    context_lens: torch.Tensor  # [count] keys per sequence, the new token's included


@dataclass(slots=True)
class PrefillTables:
    """The multi-token chunks, for the in-place paged prefill kernel: each reads its keys
    (its own new ones included) through its block table."""

    block_tables: torch.Tensor  # [chunks, max_blocks] int64, short tables padded with 0
    starts: torch.Tensor  # [chunks] keys cached before each chunk
    lens: torch.Tensor  # [chunks] its tokens
    rows: torch.Tensor  # [chunks] its first row in the step's token stream


# Decode sequences are grouped so that no sequence is padded to more than twice its
# blocks (gather and attention cost follow the padded length); a few groups at most,
# since each costs a gather and an attention call per layer.
MAX_DECODE_GROUPS = 4


@dataclass(slots=True)
class StepMetadata:
    """Everything the layers need for one forward, built once per step. Decode chunks
    (one token) come first in the token stream, batched; multi-token chunks follow."""

    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    slot_mapping: torch.Tensor  # [T] cache slot of each new token
    num_decode: int
    decode_groups: list[DecodeGroup]  # empty when decode_tables is set
    decode_tables: DecodeTables | None
    prefills: list[PrefillSeq]  # empty when prefill_tables is set
    prefill_tables: PrefillTables | None
    logit_rows: torch.Tensor | None  # rows of the stream needing logits, in chunk order
    num_logit_rows: int
    chunk_rows: list[int]  # first row of each chunk in the stream, in chunk order
    sink: int = 0  # sink tokens every windowed layer keeps attending to


def _live(table: list[int]) -> list[int]:
    """The table with freed entries pointing at the sequence's own last block: gathers
    stay in range and read finite values, which the window masks then exclude."""
    if FREED_BLOCK not in table:
        return table
    return [table[-1] if b == FREED_BLOCK else b for b in table]


def _window_ok(keys: torch.Tensor, query_pos: torch.Tensor, window: int | None,
               sink: int = 0) -> torch.Tensor:
    """Causal, and with a window: the last window - sink keys (the query's own included)
    plus the first sink keys (StreamingLLM's attention sinks)."""
    allowed = keys <= query_pos
    if window is not None:
        allowed &= (keys > query_pos - (window - sink)) | (keys < sink)
    return allowed


def _decode_groups(
    chunks: list[SeqChunk],
    decode: list[int],
    block_size: int,
    windows: set[int | None],
    device: torch.device,
    sink: int = 0,
) -> list[DecodeGroup]:
    """Splits the decode chunks (sorted longest first) into padded batches."""
    used = [(chunks[i].start_pos + block_size) // block_size for i in decode]
    spans: list[list[int]] = []  # [first, end) into `decode`
    for j, blocks in enumerate(used):
        if spans and (2 * blocks >= used[spans[-1][0]] or len(spans) == MAX_DECODE_GROUPS):
            spans[-1][1] = j + 1
        else:
            spans.append([j, j + 1])
    groups = []
    for first, end in spans:
        max_blocks = used[first]
        flat: list[int] = []
        for j in range(first, end):
            own = _live(chunks[decode[j]].block_table[: used[j]])
            flat.extend(own)
            # Padding (masked out below) repeats the sequence's own last block, so a
            # non-finite value elsewhere in the cache can never leak in as 0 * NaN.
            flat.extend([own[-1]] * (max_blocks - used[j]))
        contexts = [chunks[decode[j]].start_pos + 1 for j in range(first, end)]
        keys = torch.arange(max_blocks * block_size)[None, :]
        query_pos = torch.tensor(contexts, dtype=torch.long)[:, None] - 1
        masks: dict[int | None, torch.Tensor | None] = {}
        for window in windows:
            if window is None and min(contexts) == max_blocks * block_size:
                masks[window] = None  # every key of every sequence is attended
            else:
                mask = _window_ok(keys, query_pos, window, sink)[:, None, None, :]
                masks[window] = mask.to(device, non_blocking=True)
        blocks = torch.tensor(flat, dtype=torch.long).to(device, non_blocking=True)
        groups.append(DecodeGroup(first, end - first, max_blocks, blocks, masks))
    return groups


def _decode_tables(chunks: list[SeqChunk], decode: list[int], block_size: int,
                   device: torch.device) -> DecodeTables:
    """One kernel row per token: token j of a chunk attends to start_pos + j + 1 keys
    through the chunk's block table (its own new keys are in the cache by then)."""
    tables: list[list[int]] = []
    lens: list[int] = []
    for i in decode:
        chunk = chunks[i]
        n = len(chunk.token_ids)
        used = (chunk.start_pos + n + block_size - 1) // block_size
        tables.extend([_live(chunk.block_table[:used])] * n)
        lens.extend(range(chunk.start_pos + 1, chunk.start_pos + n + 1))
    width = max(len(t) for t in tables)
    rows = [t + [0] * (width - len(t)) for t in tables]
    return DecodeTables(
        block_tables=torch.tensor(rows, dtype=torch.long).to(device),
        context_lens=torch.tensor(lens, dtype=torch.long).to(device),
    )


def _prefill_tables(chunks: list[SeqChunk], multi: list[int], row_of_chunk: list[int],
                    block_size: int, device: torch.device) -> PrefillTables:
    tables: list[list[int]] = []
    for i in multi:
        chunk = chunks[i]
        used = (chunk.start_pos + len(chunk.token_ids) + block_size - 1) // block_size
        tables.append(_live(chunk.block_table[:used]))
    width = max(len(t) for t in tables)

    def column(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long).to(device)

    return PrefillTables(
        block_tables=column([t + [0] * (width - len(t)) for t in tables]),
        starts=column([chunks[i].start_pos for i in multi]),
        lens=column([len(chunks[i].token_ids) for i in multi]),
        rows=column([row_of_chunk[i] for i in multi]),
    )


# Chunks of up to this many tokens (decodes, speculative verifications, short prompt
# tails) go through the in-place decode kernel one row per token, with no gather.
KERNEL_MAX_CHUNK = 16


def build_step(
    chunks: list[SeqChunk],
    block_size: int,
    windows: set[int | None],
    device: torch.device,
    attention_kernels: bool = False,
    sink: int = 0,
) -> StepMetadata:
    """Orders the chunks' tokens (decodes first), computes slots, block tables and masks.
    attention_kernels: describe the chunks for the in-place paged kernels (single-token
    and short chunks: a block table and key count per token; longer ones: a block table,
    start and length per chunk) instead of padded, masked decode groups and gathered
    prefills. sink: tokens at the start that windowed layers always attend to."""
    short = KERNEL_MAX_CHUNK if attention_kernels else 1
    decode = [i for i, c in enumerate(chunks) if len(c.token_ids) <= short]
    decode.sort(key=lambda i: chunks[i].start_pos, reverse=True)  # longest first
    multi = [i for i, c in enumerate(chunks) if len(c.token_ids) > short]
    order = decode + multi
    ids: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    row_of_chunk = [0] * len(chunks)
    for i in order:
        chunk = chunks[i]
        row_of_chunk[i] = len(ids)
        start, table = chunk.start_pos, chunk.block_table
        ids.extend(chunk.token_ids)
        end = start + len(chunk.token_ids)
        positions.extend(range(start, end))
        slots.extend(
            table[p // block_size] * block_size + p % block_size for p in range(start, end)
        )

    tables = None
    groups: list[DecodeGroup] = []
    if decode and attention_kernels:
        tables = _decode_tables(chunks, decode, block_size, device)
    elif decode:
        groups = _decode_groups(chunks, decode, block_size, windows, device, sink)
    prefills: list[PrefillSeq] = []
    prefill_tables = None
    if multi and attention_kernels:
        prefill_tables = _prefill_tables(chunks, multi, row_of_chunk, block_size, device)
        multi = []
    for i in multi:
        chunk = chunks[i]
        n, start = len(chunk.token_ids), chunk.start_pos
        context = start + n
        fresh = start == 0
        seq = PrefillSeq(row_of_chunk[i], n, context, fresh, None)
        if not fresh:
            used = (context + block_size - 1) // block_size
            seq.blocks = torch.tensor(_live(chunk.block_table[:used]),
                                      dtype=torch.long).to(device)
        keys = torch.arange(context)[None, :]
        query_pos = torch.arange(start, context)[:, None]
        for window in windows:
            if fresh and (window is None or window >= context):
                seq.masks[window] = None
            else:
                seq.masks[window] = _window_ok(keys, query_pos, window, sink).to(device)
        prefills.append(seq)

    rows: list[int] = []
    for i, chunk in enumerate(chunks):
        n, first = len(chunk.token_ids), row_of_chunk[i]
        if chunk.logits == "last":
            rows.append(first + n - 1)
        elif chunk.logits == "all":
            rows.extend(range(first, first + n))
    in_order = rows == list(range(len(ids)))
    return StepMetadata(
        input_ids=torch.tensor(ids, dtype=torch.long).to(device, non_blocking=True),
        positions=torch.tensor(positions, dtype=torch.long).to(device, non_blocking=True),
        slot_mapping=torch.tensor(slots, dtype=torch.long).to(device, non_blocking=True),
        num_decode=sum(len(chunks[i].token_ids) for i in decode),
        decode_groups=groups,
        decode_tables=tables,
        prefills=prefills,
        prefill_tables=prefill_tables,
        logit_rows=None if in_order else torch.tensor(rows, dtype=torch.long).to(device),
        num_logit_rows=len(rows),
        chunk_rows=row_of_chunk,
        sink=sink,
    )


def paged_attention(
    layer: int,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cache: KVCache,
    meta: StepMetadata,
    scale: float,
    window: int | None,
) -> torch.Tensor:
    """q: [T, Hq, D]; k, v: [T, Hkv, D] (rotated). Writes k/v into the cache, returns
    the attention output [T, Hq, D]."""
    k_slots, v_slots = cache.k_flat(layer), cache.v_flat(layer)
    k_slots.index_copy_(0, meta.slot_mapping, k)
    v_slots.index_copy_(0, meta.slot_mapping, v)
    num_tokens, num_heads, head_dim = q.shape
    num_kv = k.shape[1]
    group = num_heads // num_kv
    tables = meta.decode_tables
    if tables is not None and meta.num_decode == num_tokens:
        return paged_decode(q, cache.k[layer], cache.v[layer], tables.block_tables,
                            tables.context_lens, scale, window, meta.sink)
    if len(meta.decode_groups) == 1 and meta.num_decode == num_tokens:
        return _decode(layer, q, cache, meta.decode_groups[0], scale, window, group)
    out = q.new_empty((num_tokens, num_heads, head_dim))
    if tables is not None:
        nd = meta.num_decode
        out[:nd] = paged_decode(q[:nd], cache.k[layer], cache.v[layer], tables.block_tables,
                                tables.context_lens, scale, window, meta.sink)
    pre = meta.prefill_tables
    if pre is not None:
        paged_prefill(out, q, cache.k[layer], cache.v[layer], pre.block_tables, pre.starts,
                      pre.lens, pre.rows, scale, window, meta.sink)
    for dg in meta.decode_groups:
        rows = slice(dg.offset, dg.offset + dg.count)
        out[rows] = _decode(layer, q[rows], cache, dg, scale, window, group)
    for seq in meta.prefills:
        rows = slice(seq.offset, seq.offset + seq.length)
        qs = q[rows].transpose(0, 1).unsqueeze(0)  # [1, Hq, n, D]
        mask = seq.masks[window]
        if seq.fresh:
            ks, vs = k[rows], v[rows]
        else:
            assert seq.blocks is not None
            ks, vs = cache.gather_blocks(layer, seq.blocks)
            ks, vs = ks[: seq.context], vs[: seq.context]
        ks = ks.transpose(0, 1).unsqueeze(0)  # [1, Hkv, ctx, D]
        vs = vs.transpose(0, 1).unsqueeze(0)
        attn = F.scaled_dot_product_attention(
            qs,
            ks,
            vs,
            attn_mask=mask,
            is_causal=mask is None,
            scale=scale,
            enable_gqa=group > 1,
        )
        out[rows] = attn[0].transpose(0, 1)
    return out


def _decode(
    layer: int,
    q: torch.Tensor,
    cache: KVCache,
    dg: DecodeGroup,
    scale: float,
    window: int | None,
    group: int,
) -> torch.Tensor:
    """One query token per sequence, batched: each sequence's blocks are gathered and
    padded to the group's longest context; the query heads sharing a KV head are folded
    into the query-length axis so GQA needs no K/V repetition."""
    batch, num_heads, head_dim = q.shape
    num_kv = num_heads // group
    length = dg.max_blocks * cache.block_size
    ks, vs = cache.gather_blocks(layer, dg.blocks)
    ks = ks.view(batch, length, num_kv, head_dim).transpose(1, 2)
    vs = vs.view(batch, length, num_kv, head_dim).transpose(1, 2)
    qs = q.view(batch, num_kv, group, head_dim)
    attn = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=dg.masks[window], scale=scale)
    return attn.reshape(batch, num_heads, head_dim)
