"""The paged KV cache tensors: per layer K and V of shape
[num_blocks, block_size, num_kv_heads, head_dim], all views of one allocation so that
block copies (beam search, copy-on-write) are one indexing op over every layer."""

from __future__ import annotations

import torch

from llmserve.core.errors import InvalidArgument


def kv_cache_bytes_per_block(
    num_layers: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype
) -> int:
    element = torch.empty(0, dtype=dtype).element_size()
    return 2 * num_layers * block_size * num_kv_heads * head_dim * element


class KVCache:
    """K/V blocks for every layer. Slot s of the cache is block s // block_size, offset
    s % block_size; `k_flat(layer)` views a layer's K as [num_blocks * block_size, H, D]."""

    def __init__(
        self,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ):
        if num_blocks <= 0 or block_size <= 0:
            raise InvalidArgument(
                f"KV cache needs num_blocks > 0 and block_size > 0 (got {num_blocks}, {block_size})"
            )
        self.num_layers = num_layers
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        # Zeros, not empty: attention reads whole blocks and masks the unused tail, and
        # uninitialised memory could hold NaN, which a mask does not remove (0 * NaN).
        self.data = torch.zeros(
            num_layers,
            2,
            num_blocks,
            block_size,
            num_kv_heads,
            head_dim,
            dtype=dtype,
            device=device,
        )
        self.k: list[torch.Tensor] = [self.data[i, 0] for i in range(num_layers)]
        self.v: list[torch.Tensor] = [self.data[i, 1] for i in range(num_layers)]
        self._workspace: torch.Tensor | None = None

    @property
    def num_slots(self) -> int:
        return self.num_blocks * self.block_size

    def k_flat(self, layer: int) -> torch.Tensor:
        return self.k[layer].view(self.num_slots, self.num_kv_heads, self.head_dim)

    def v_flat(self, layer: int) -> torch.Tensor:
        return self.v[layer].view(self.num_slots, self.num_kv_heads, self.head_dim)

    def gather_blocks(self, layer: int, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of the given blocks, [len(blocks) * block_size, H, D] each. The result
        lives in a reused workspace, valid until the next call: fresh multi-MB buffers
        per call would page-fault on every layer. Rows of a 2-D view are selected
        because that is several times faster than selecting from the 4-D tensor."""
        num = blocks.shape[0]
        row = self.block_size * self.num_kv_heads * self.head_dim
        if self._workspace is None or self._workspace.shape[1] < num:
            capacity = max(num, 2 * (0 if self._workspace is None else self._workspace.shape[1]))
            self._workspace = self.data.new_empty(2, capacity, row)
        k_out, v_out = self._workspace[0, :num], self._workspace[1, :num]
        torch.index_select(self.k[layer].view(self.num_blocks, row), 0, blocks, out=k_out)
        torch.index_select(self.v[layer].view(self.num_blocks, row), 0, blocks, out=v_out)
        shape = (num * self.block_size, self.num_kv_heads, self.head_dim)
        return k_out.view(shape), v_out.view(shape)

    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        """Copies block src -> dst in every layer, K and V; all reads happen before any
        write, so chains (a->b, b->c) copy the old contents."""
        if not pairs:
            return
        for src, dst in pairs:
            if not (0 <= src < self.num_blocks and 0 <= dst < self.num_blocks):
                raise InvalidArgument(
                    f"copy_blocks: block pair ({src}, {dst}) out of range [0, {self.num_blocks})"
                )
        device = self.data.device
        src_idx = torch.tensor([p[0] for p in pairs], dtype=torch.long, device=device)
        dst_idx = torch.tensor([p[1] for p in pairs], dtype=torch.long, device=device)
        self.data[:, :, dst_idx] = self.data[:, :, src_idx]


class HostKVPool:
    """Host memory for KV blocks moved out of a KVCache (the offload tier of block
    reuse): one slot holds a block's K and V of every layer. Pinned on CUDA so the copies
    run asynchronously, in stream order with the forwards that use the blocks."""

    def __init__(self, cache: KVCache, num_slots: int):
        if num_slots <= 0:
            raise InvalidArgument(f"host KV cache needs at least one block, got {num_slots}")
        self.cache = cache
        self.num_slots = num_slots
        shape = (num_slots, *cache.data[:, :, 0].shape)
        pin = cache.data.device.type == "cuda"
        # empty, not zeros: a slot is always written (offload) before it is read (onboard)
        self.data = torch.empty(shape, dtype=cache.data.dtype, pin_memory=pin)

    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()

    def offload(self, block: int, slot: int) -> None:
        self.data[slot].copy_(self.cache.data[:, :, block], non_blocking=True)

    def onboard(self, slot: int, block: int) -> None:
        self.cache.data[:, :, block].copy_(self.data[slot], non_blocking=True)
