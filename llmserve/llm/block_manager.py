"""The KV block pool: ref counts, an LRU free queue, and prefix reuse by hash chain.

Full blocks are keyed by hash(parent hash, block tokens, extra keys such as the LoRA
task id). A freed block that holds a cached prefix stays reusable until the free queue
evicts it (least recently freed first). Nothing else knows how blocks are laid out.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence as Seq
from dataclasses import dataclass

from llmserve.llm.kv_events import all_blocks_cleared, block_removed, block_stored
from llmserve.llm.sequence import Sequence

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    block_hash: int | None = None
    tokens: tuple[int, ...] = ()
    parent_hash: int | None = None


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

    def computed_blocks(self, seq: Sequence, extra: tuple = ()) -> list[int]:
        """Longest cached prefix of seq's tokens, as block ids, leaving >= 1 token to run."""
        if not self.enable_reuse or seq.block_table:
            return []
        found: list[int] = []
        parent: int | None = None
        limit = (len(seq.token_ids) - 1) // self.block_size
        bs = self.block_size
        for i in range(limit):
            tokens = tuple(seq.token_ids[i * bs : (i + 1) * bs])
            h = block_hash(parent, tokens, extra)
            block_id = self.cached.get(h)
            if block_id is None:
                break
            block = self.blocks[block_id]
            if block.tokens != tokens or block.parent_hash != parent:
                break  # hash collision: not our prefix
            found.append(block_id)
            parent = h
        return found

    def can_allocate(self, seq: Sequence, num_new_tokens: int,
                     computed: Seq[int] = ()) -> bool:
        return self._needed(seq, num_new_tokens, computed) <= self.num_free_blocks

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
            for block_id in computed:
                self._take(block_id)
            seq.block_table.extend(computed)
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
        for _ in range(need):
            seq.block_table.append(self._pop_free())
            seq.num_new_blocks += 1
        return copies

    def cache_full_blocks(self, seq: Sequence, extra: tuple = ()) -> None:
        """Register the blocks seq has completely filled so later requests can reuse them."""
        if not self.enable_reuse:
            return
        bs = self.block_size
        full = seq.num_computed // bs
        stored: list[Block] = []
        for i in range(len(seq.block_hashes), full):
            parent = seq.block_hashes[i - 1] if i else None
            tokens = tuple(seq.token_ids[i * bs : (i + 1) * bs])
            h = block_hash(parent, tokens, extra)
            seq.block_hashes.append(h)
            block = self.blocks[seq.block_table[i]]
            if block.block_hash is not None or h in self.cached:
                continue  # already cached (shared block) or the same content lives elsewhere
            block.block_hash, block.tokens, block.parent_hash = h, tokens, parent
            self.cached[h] = block.block_id
            stored.append(block)
        if stored and self.events is not None:
            self._stored_events(stored, extra)

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """child shares all of parent's blocks (copy-on-write at the next partial write)."""
        assert not child.block_table
        for block_id in parent.block_table:
            self.blocks[block_id].ref_count += 1
        child.block_table = list(parent.block_table)
        child.block_hashes = list(parent.block_hashes)
        child.num_computed = parent.num_computed
        child.num_reused_blocks = parent.num_reused_blocks
        child.num_missed_blocks = parent.num_missed_blocks

    def free(self, seq: Sequence) -> None:
        """Release seq's blocks, tail first, so the prefix stays cached the longest."""
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            assert block.ref_count > 0, f"double free of block {block_id}"
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free_queue[block_id] = None
                if block.block_hash is None:
                    # nothing to reuse in it: hand it out before any cached block
                    self.free_queue.move_to_end(block_id, last=False)
        seq.block_table = []
        seq.block_hashes = []
        seq.num_computed = 0

    def reset_prefix_cache(self) -> None:
        events, self.events = self.events, None  # one AllBlocksCleared, not a removal each
        for block_id in list(self.cached.values()):
            self._uncache(self.blocks[block_id])
        self.events = events
        if self.events is not None:
            self.events.append(all_blocks_cleared())

    def take_events(self) -> list[dict]:
        """The events since the last take (none when nobody listens)."""
        if not self.events:
            return []
        events, self.events = self.events, []
        return events

    def _stored_events(self, stored: list[Block], extra: tuple) -> None:
        """One BlockStored per run of blocks that chain onto each other."""
        assert self.events is not None
        lora_id = int(extra[0]) if extra else None
        run: list[Block] = []
        for block in stored + [None]:  # type: ignore[list-item]
            if block is not None and run and block.parent_hash == run[-1].block_hash:
                run.append(block)
                continue
            if run:
                self.events.append(block_stored(
                    [b.block_hash for b in run], run[0].parent_hash,  # type: ignore[misc]
                    [t for b in run for t in b.tokens], self.block_size, lora_id))
            run = [block] if block is not None else []

    # -- internals -------------------------------------------------------------

    def _needed(self, seq: Sequence, num_new_tokens: int, computed: Seq[int]) -> int:
        base = len(computed) * self.block_size if computed else seq.num_computed
        table = len(computed) if computed else len(seq.block_table)
        need = max(0, self.blocks_for(base + num_new_tokens) - table)
        # reused blocks sitting in the free queue are taken out of it
        need += sum(1 for b in computed if self.blocks[b].ref_count == 0)
        first = seq.num_computed // self.block_size
        if (not computed and first < len(seq.block_table) and seq.num_computed % self.block_size
                and self.blocks[seq.block_table[first]].ref_count > 1):
            need += 1
        return need

    def _take(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self.free_queue[block_id]
        block.ref_count += 1

    def _pop_free(self) -> int:
        block_id, _ = self.free_queue.popitem(last=False)
        block = self.blocks[block_id]
        assert block.ref_count == 0
        if block.block_hash is not None:
            self._uncache(block)  # evicted: its prefix is gone
        block.ref_count = 1
        self.total_new += 1
        return block_id

    def _uncache(self, block: Block) -> None:
        if block.block_hash is not None and self.cached.get(block.block_hash) == block.block_id:
            del self.cached[block.block_hash]
            if self.events is not None:
                self.events.append(block_removed([block.block_hash]))
        block.block_hash, block.tokens, block.parent_hash = None, (), None
