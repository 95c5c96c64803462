"""The host tier of KV block reuse (TensorRT-LLM's KvCacheConfig.host_cache_size): a
reusable block evicted from the device cache is copied into a host slot instead of being
lost, and is copied back (onboarded) when a later request's prefix needs it. Slots are
evicted least recently stored first. The engine does the copies; this holds the books."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class HostBlock:
    slot: int
    block_hash: int
    tokens: tuple[int, ...]
    parent_hash: int | None
    lora_id: int | None


class HostTier:
    """offload(device_block, slot) and onboard(slot, device_block) copy a block's K/V;
    both run at once, before the step's forward writes any block."""

    def __init__(self, num_slots: int, offload: Callable[[int, int], None],
                 onboard: Callable[[int, int], None]) -> None:
        assert num_slots > 0
        self.num_slots = num_slots
        self._offload, self._onboard = offload, onboard
        self._free = list(range(num_slots - 1, -1, -1))
        self.blocks: OrderedDict[int, HostBlock] = OrderedDict()  # hash -> block, LRU first
        self.total_offloaded = 0
        self.total_onboarded = 0

    def __len__(self) -> int:
        return len(self.blocks)

    def get(self, block_hash: int) -> HostBlock | None:
        return self.blocks.get(block_hash)

    def store(self, device_block: int, block_hash: int, tokens: tuple[int, ...],
              parent_hash: int | None, lora_id: int | None) -> list[HostBlock]:
        """Copies an evicted device block into a slot; returns the host blocks evicted
        to make room (their content is gone)."""
        evicted: list[HostBlock] = []
        if block_hash in self.blocks:  # the same content is already here
            self.blocks.move_to_end(block_hash)
            return evicted
        if not self._free:
            _, old = self.blocks.popitem(last=False)
            self._free.append(old.slot)
            evicted.append(old)
        slot = self._free.pop()
        self._offload(device_block, slot)
        self.blocks[block_hash] = HostBlock(slot, block_hash, tokens, parent_hash, lora_id)
        self.total_offloaded += 1
        return evicted

    def take(self, block_hash: int) -> HostBlock:
        """Removes a block from the tier (its slot stays reserved until restore), so that
        evictions made while finding it a device block cannot reuse its slot."""
        return self.blocks.pop(block_hash)

    def restore(self, block: HostBlock, device_block: int) -> None:
        """Copies a taken block into device_block and frees its slot."""
        self._onboard(block.slot, device_block)
        self._free.append(block.slot)
        self.total_onboarded += 1

    def clear(self) -> None:
        for block in self.blocks.values():
            self._free.append(block.slot)
        self.blocks.clear()
