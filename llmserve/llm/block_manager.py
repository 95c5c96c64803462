"""The KV block pool: ref counts, an LRU free queue, and prefix reuse by hash chain.

Full blocks are keyed by hash(parent hash, block tokens, extra keys such as the LoRA
task id and p-tuning extra ids). A freed block that holds a cached prefix stays reusable
until the free queue evicts it (least recently freed first); with a host tier
(host_tier.py) an evicted one moves to host memory and comes back on a prefix hit. With
an attention window, blocks no future query can see are freed (FREED_BLOCK in the table).
Nothing else knows how blocks are laid out.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence as Seq
from dataclasses import dataclass

from llmserve.llm.engine.attention import FREED_BLOCK
from llmserve.llm.host_tier import HostTier
from llmserve.llm.kv_events import HOST_MEDIUM, all_blocks_cleared, block_removed, block_stored
from llmserve.llm.sequence import Sequence

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    block_hash: int | None = None
    tokens: tuple[int, ...] = ()
    parent_hash: int | None = None
    lora_id: int | None = None


def block_hash(parent: int | None, tokens: Seq[int], extra: tuple = ()) -> int:
    return hash((parent, tuple(tokens), extra))


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_reuse: bool = False) -> None:
        assert num_blocks > 0 and block_size > 0
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_reuse = enable_reuse
        self.blocks = [Block(i) for i in range(num_blocks)]
        # free blocks in eviction order: first = next to be handed out
        self.free_queue: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.cached: dict[int, int] = {}  # block hash -> block id
        self.total_reused = 0  # blocks handed out again from the prefix cache, ever
        self.total_new = 0
        # KV cache events (kv_events.py) since the last take, when someone listens
        self.events: list[dict] | None = None
        self.host: HostTier | None = None  # where evicted reusable blocks go
        # the widest attention window of any layer (None: some layer sees everything)
        # and the sink tokens that windows keep: blocks outside both are freed
        self.window: int | None = None
        self.sink = 0

    def set_attention_window(self, window: int | None, sink: int = 0) -> None:
        assert window is None or window > sink >= 0
        self.window, self.sink = window, sink

    # -- queries ---------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_queue)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self.free_queue)

    @property
    def num_cached_blocks(self) -> int:
        return len(self.cached)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def held(self, seq: Sequence) -> int:
        """Blocks seq holds (its table less the entries freed outside the window)."""
        return len(seq.block_table) - seq.block_table.count(FREED_BLOCK)

    def max_blocks_held(self, total_tokens: int, span: int) -> int:
        """Most blocks a sequence growing to total_tokens holds at once when one step adds
        at most span tokens: with a window, the sink blocks plus the blocks a window of
        keys and one step's tokens can straddle."""
        full = self.blocks_for(total_tokens)
        if self.window is None:
            return full
        live = self.blocks_for(self.window - self.sink - 1 + span) + 1
        return min(full, self.blocks_for(self.sink) + live)

    def _block_key(self, seq: Sequence, i: int, extra: tuple) -> tuple[tuple[int, ...], tuple]:
        """Block i's tokens and hash extras: p-tuning extra ids join the LoRA key when
        any token of the block has one (TensorRT-LLM hashes (token, extra id) pairs)."""
        bs = self.block_size
        tokens = tuple(seq.token_ids[i * bs : (i + 1) * bs])
        ids = seq.state.token_extra_ids
        if ids is not None:
            own = tuple(ids[i * bs : (i + 1) * bs])
            if any(own):
                extra = (*extra, own + (0,) * (len(tokens) - len(own)))
        return tokens, extra

    def computed_blocks(self, seq: Sequence, extra: tuple = ()) -> list[int]:
        """Longest cached prefix of seq's tokens, as block ids, leaving >= 1 token to run.
        Blocks found in the host tier are onboarded into free device blocks (cached, not
        yet taken) on the way."""
        if not self.enable_reuse or seq.block_table:
            return []
        found: list[int] = []
        parent: int | None = None
        limit = (len(seq.token_ids) - 1) // self.block_size
        for i in range(limit):
            tokens, key = self._block_key(seq, i, extra)
            h = block_hash(parent, tokens, key)
            block_id = self.cached.get(h)
            if block_id is None and self.host is not None:
                block_id = self._onboard(h, tokens, parent, found)
            if block_id is None:
                break
            block = self.blocks[block_id]
            if block.tokens != tokens or block.parent_hash != parent:
                break  # hash collision: not our prefix
            if block.ref_count == 0:  # most recently wanted: evicted last
                self.free_queue.move_to_end(block_id)
            found.append(block_id)
            parent = h
        return found

    # -- mutation --------------------------------------------------------------

    def allocate_slots(self, seq: Sequence, num_new_tokens: int,
                       computed: Seq[int] = ()) -> list[tuple[int, int]] | None:
        """Make seq's block table cover num_computed (+ reused prefix) + num_new_tokens.

        Returns the (src, dst) block copies needed first (copy-on-write of a shared
        partial block), or None, changing nothing, when too few blocks are free.
        """
        if self._needed(seq, num_new_tokens, computed) > self.num_free_blocks:
            return None
        if not seq.block_table and seq.num_generated == 0:
            seq.num_missed_blocks = max(0, seq.prompt_len // self.block_size - len(computed))
        if computed:
            assert not seq.block_table and seq.num_computed == 0
            skip = self._out_of_window(seq, len(computed) * self.block_size)
            for i, block_id in enumerate(computed):
                if i in skip:  # reused, but outside the window: never read
                    seq.block_table.append(FREED_BLOCK)
                else:
                    self._take(block_id)
                    seq.block_table.append(block_id)
            hashes = [self.blocks[b].block_hash for b in computed]
            seq.block_hashes.extend(h for h in hashes if h is not None)
            seq.num_computed = len(computed) * self.block_size
            seq.num_reused_blocks += len(computed)
            self.total_reused += len(computed)
        copies: list[tuple[int, int]] = []
        first = seq.num_computed // self.block_size
        if first < len(seq.block_table) and seq.num_computed % self.block_size:
            old = seq.block_table[first]
            if self.blocks[old].ref_count > 1:  # shared partial block: copy before writing
                new = self._pop_free()
                seq.num_new_blocks += 1
                copies.append((old, new))
                self.blocks[old].ref_count -= 1
                seq.block_table[first] = new
        need = self.blocks_for(seq.num_computed + num_new_tokens) - len(seq.block_table)
        # Contiguity: a sequence's blocks in ascending order, and a growing sequence's
        # next block right after its last when that one is free. The CPU decode kernel
        # reads a sequence's keys and values block after block; across adjacent blocks
        # the hardware prefetcher keeps streaming, across scattered ones it starts over
        # (scripts/bench/step_cost.py; docs/BENCHMARKS.md, session 10: nearly twice
        # the time scattered). A cached free block is taken out of eviction order that
        # way only while more than half the pool is free.
        last = seq.block_table[-1] if need == 1 and seq.block_table else FREED_BLOCK
        nxt = last + 1 if last >= 0 else -1
        if nxt in self.free_queue and (self.blocks[nxt].block_hash is None
                                       or 2 * self.num_free_blocks > self.num_blocks):
            seq.block_table.append(self._take_free(nxt))
        else:
            seq.block_table.extend(sorted(self._pop_free() for _ in range(need)))
        seq.num_new_blocks += need
        return copies

    def cache_full_blocks(self, seq: Sequence, extra: tuple = ()) -> None:
        """Register the blocks seq has completely filled so later requests can reuse them."""
        if not self.enable_reuse:
            return
        full = seq.num_computed // self.block_size
        stored: list[Block] = []
        for i in range(len(seq.block_hashes), full):
            parent = seq.block_hashes[i - 1] if i else None
            tokens, key = self._block_key(seq, i, extra)
            h = block_hash(parent, tokens, key)
            seq.block_hashes.append(h)
            block = self.blocks[seq.block_table[i]]
            if block.block_hash is not None or h in self.cached:
                continue  # already cached (shared block) or the same content lives elsewhere
            block.block_hash, block.tokens, block.parent_hash = h, tokens, parent
            block.lora_id = int(extra[0]) if extra else None
            self.cached[h] = block.block_id
            stored.append(block)
        if stored and self.events is not None:
            self._stored_events(stored)

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """child shares all of parent's blocks (copy-on-write at the next partial write)."""
        assert not child.block_table
        for block_id in parent.block_table:
            if block_id != FREED_BLOCK:
                self.blocks[block_id].ref_count += 1
        child.block_table = list(parent.block_table)
        child.block_hashes = list(parent.block_hashes)
        child.num_computed = parent.num_computed
        child.num_reused_blocks = parent.num_reused_blocks
        child.num_missed_blocks = parent.num_missed_blocks

    def free(self, seq: Sequence) -> None:
        """Release seq's blocks, tail first, so the prefix stays cached the longest."""
        for block_id in reversed(seq.block_table):
            if block_id != FREED_BLOCK:
                self._release(block_id)
        seq.block_table = []
        seq.block_hashes = []
        seq.num_computed = 0

    def release_out_of_window(self, seq: Sequence) -> int:
        """Frees seq's blocks that no later query can attend to (after its computed
        tokens, with the attention window): their table entries become FREED_BLOCK.
        Returns how many were freed. Beams keep every block (they share and copy them)."""
        skip = self._out_of_window(seq, seq.num_computed)
        table = seq.block_table
        i = min(skip.stop, len(table)) - 1
        freed = 0
        while i >= skip.start and table[i] != FREED_BLOCK:  # freed ones are contiguous
            self._release(table[i])
            table[i] = FREED_BLOCK
            freed += 1
            i -= 1
        return freed

    def reset_prefix_cache(self) -> None:
        events, self.events = self.events, None  # one AllBlocksCleared, not a removal each
        for block_id in list(self.cached.values()):
            self._uncache(self.blocks[block_id])
        if self.host is not None:
            self.host.clear()
        self.events = events
        if self.events is not None:
            self.events.append(all_blocks_cleared())

    def take_events(self) -> list[dict]:
        """The events since the last take (none when nobody listens)."""
        if not self.events:
            return []
        events, self.events = self.events, []
        return events

    def _stored_events(self, stored: list[Block]) -> None:
        """One BlockStored per run of blocks that chain onto each other."""
        assert self.events is not None
        run: list[Block] = []
        for block in stored + [None]:  # type: ignore[list-item]
            if (block is not None and run and block.parent_hash == run[-1].block_hash
                    and block.lora_id == run[-1].lora_id):
                run.append(block)
                continue
            if run:
                self.events.append(block_stored(
                    [b.block_hash for b in run], run[0].parent_hash,  # type: ignore[misc]
                    [t for b in run for t in b.tokens], self.block_size, run[0].lora_id))
            run = [block] if block is not None else []

    # -- internals -------------------------------------------------------------

    def _out_of_window(self, seq: Sequence, num_computed: int) -> range:
        """Table positions no query at or after num_computed attends to (the sink
        blocks excluded); empty without a window and for beams."""
        if self.window is None or seq.state.beam is not None:
            return range(0)
        keep_from = num_computed - (self.window - self.sink) + 1
        return range(self.blocks_for(self.sink), max(0, keep_from // self.block_size))

    def _needed(self, seq: Sequence, num_new_tokens: int, computed: Seq[int]) -> int:
        base = len(computed) * self.block_size if computed else seq.num_computed
        table = len(computed) if computed else len(seq.block_table)
        need = max(0, self.blocks_for(base + num_new_tokens) - table)
        # reused blocks sitting in the free queue are taken out of it
        skip = self._out_of_window(seq, base) if computed else range(0)
        need += sum(1 for i, b in enumerate(computed)
                    if self.blocks[b].ref_count == 0 and i not in skip)
        first = seq.num_computed // self.block_size
        if (not computed and first < len(seq.block_table) and seq.num_computed % self.block_size
                and self.blocks[seq.block_table[first]].ref_count > 1):
            need += 1
        return need

    def _release(self, block_id: int) -> None:
        block = self.blocks[block_id]
        assert block.ref_count > 0, f"double free of block {block_id}"
        block.ref_count -= 1
        if block.ref_count == 0:
            self.free_queue[block_id] = None
            if block.block_hash is None:
                # nothing to reuse in it: hand it out before any cached block
                self.free_queue.move_to_end(block_id, last=False)

    def _take(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self.free_queue[block_id]
        block.ref_count += 1

    def _pop_free(self) -> int:
        block_id, _ = self.free_queue.popitem(last=False)
        return self._claim(block_id)

    def _take_free(self, block_id: int) -> int:
        del self.free_queue[block_id]
        return self._claim(block_id)

    def _claim(self, block_id: int) -> int:
        block = self.blocks[block_id]
        assert block.ref_count == 0
        if block.block_hash is not None:
            if self.host is not None and self.cached.get(block.block_hash) == block_id:
                self._offload(block)
            self._uncache(block)  # evicted: its prefix is gone (or in the host tier)
        block.ref_count = 1
        self.total_new += 1
        return block_id

    def _uncache(self, block: Block) -> None:
        if block.block_hash is not None and self.cached.get(block.block_hash) == block.block_id:
            del self.cached[block.block_hash]
            if self.events is not None:
                self.events.append(block_removed([block.block_hash]))
        block.block_hash, block.tokens, block.parent_hash, block.lora_id = None, (), None, None

    # -- the host tier ---------------------------------------------------------------

    def _offload(self, block: Block) -> None:
        assert self.host is not None and block.block_hash is not None
        evicted = self.host.store(block.block_id, block.block_hash, block.tokens,
                                  block.parent_hash, block.lora_id)
        if self.events is not None:
            if evicted:
                self.events.append(block_removed([e.block_hash for e in evicted], HOST_MEDIUM))
            self.events.append(block_stored([block.block_hash], block.parent_hash,
                                            list(block.tokens), self.block_size,
                                            block.lora_id, HOST_MEDIUM))

    def _onboard(self, h: int, tokens: tuple[int, ...], parent: int | None,
                 found: list[int]) -> int | None:
        """Brings host block h back into a free device block, cached and free (taken
        when the request is admitted); None when it is not there or no free block is
        left but the ones of this very prefix."""
        assert self.host is not None
        entry = self.host.get(h)
        if entry is None or entry.tokens != tokens or entry.parent_hash != parent:
            return None
        own_free = sum(1 for b in found if self.blocks[b].ref_count == 0)
        if self.num_free_blocks <= own_free:
            return None
        self.host.take(h)
        block_id = self._pop_free()  # the prefix's own blocks sit at the queue's end
        self.total_new -= 1  # not an allocation: it goes back to the free queue
        self.host.restore(entry, block_id)
        block = self.blocks[block_id]
        block.ref_count = 0
        block.block_hash, block.tokens, block.parent_hash = h, tokens, parent
        block.lora_id = entry.lora_id
        self.cached[h] = block_id
        self.free_queue[block_id] = None
        if self.events is not None:
            self.events.append(block_removed([h], HOST_MEDIUM))
            self._stored_events([block])
        return block_id
