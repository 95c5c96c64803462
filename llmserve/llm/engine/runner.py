"""ModelRunner: loads a Hugging Face checkpoint onto a device and runs one batched
forward per step over mixed prefill/decode chunks on a paged KV cache."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from llmserve.core.errors import InvalidArgument, NotFound, Unavailable

from .attention import FREED_BLOCK, SeqChunk, build_step
from .config import ArchConfig, load_arch_config
from .cpu_kernels import kernels
from .kv_cache import HostKVPool, KVCache, kv_cache_bytes_per_block
from .lora import LoraBatchBuilder, LoraSource
from .models.llama import LlamaModel
from .quant import resolve_weight_formats, weight_format_note
from .rope import RopeTable
from .tensor_parallel import Shard
from .weights import load_state_dict, stored_dtype

logger = logging.getLogger(__name__)

_LOGITS_MODES = ("last", "all", "none")


def _meminfo_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


class ModelRunner:
    """Owns the model weights, the rope table and the KV cache tensors of one model (or,
    with a shard, of one tensor-parallel rank: its heads' KV cache; arch stays the whole
    model's, local_arch is the rank's)."""

    def __init__(self, model_path: str | Path, *, dtype: str = "auto", device: str = "cpu",
                 weight_only_precision: str | None = None, shard: Shard | None = None):
        path = Path(model_path)
        if not path.is_dir():
            raise NotFound(f"model folder '{path}' does not exist")
        self.model_path = path
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise Unavailable(f"device '{device}' requested but CUDA is not available")
        arch = load_arch_config(path)
        if arch.checkpoint_dtype is None:
            arch.checkpoint_dtype = stored_dtype(path)
        arch.dtype, arch.weight_dtype, arch.weight_only_precision = resolve_weight_formats(
            dtype, arch, self.device.type, weight_only_precision)
        arch.device = str(self.device)
        self.arch: ArchConfig = arch
        with torch.inference_mode():
            state = load_state_dict(path)
            self.model = LlamaModel(arch, state, arch.dtype, self.device, shard)
            del state
            self.rope = RopeTable(arch, arch.dtype, self.device)
        self.local_arch: ArchConfig = self.model.arch
        self.kv_cache: KVCache | None = None
        self.host_pool: HostKVPool | None = None
        self.sink_tokens = 0  # attention sinks of the windowed layers
        # CPU float32: decode and prefill attention read the paged cache in place (C kernels)
        self._attention_kernels = (self.device.type == "cpu" and arch.dtype == torch.float32
                                   and kernels() is not None)
        self.lora_source: LoraSource | None = None  # resolves SeqChunk.lora_task_id
        self._lora = LoraBatchBuilder()
        for window in set(arch.layer_windows) - {None}:
            logger.info("sliding-window attention of %d tokens on some layers", window)
        logger.info(
            "loaded %s (%s, %d layers, hidden %d) as %s on %s%s",
            path,
            arch.model_type,
            arch.num_layers,
            arch.hidden_size,
            arch.dtype,
            self.device,
            weight_format_note(arch),
        )

    # -- KV cache ---------------------------------------------------------------------

    def kv_cache_bytes_per_block(self, block_size: int) -> int:
        a = self.local_arch
        return kv_cache_bytes_per_block(
            a.num_layers, block_size, a.num_kv_heads, a.head_dim, a.dtype
        )

    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> None:
        """(Re)allocates the cache; any previous cache content is dropped."""
        a = self.local_arch
        self.kv_cache = None
        self.host_pool = None  # it copies to and from the old cache
        self.kv_cache = KVCache(
            a.num_layers, num_blocks, block_size, a.num_kv_heads, a.head_dim, a.dtype, self.device
        )
        logger.info(
            "KV cache: %d blocks x %d tokens, %.1f MiB",
            num_blocks,
            block_size,
            self.kv_cache.nbytes() / 2**20,
        )

    @property
    def num_blocks(self) -> int:
        return self.kv_cache.num_blocks if self.kv_cache else 0

    @property
    def block_size(self) -> int:
        return self.kv_cache.block_size if self.kv_cache else 0

    def available_memory_bytes(self) -> int:
        """Free device memory (CUDA) or available RAM (CPU) right now."""
        if self.device.type == "cuda":
            free, _total = torch.cuda.mem_get_info(self.device)
            return int(free)
        return _meminfo_available()

    def set_attention_windows(self, windows: list[int | None], sink_tokens: int = 0) -> None:
        """Per-layer attention windows (None: full attention) and the sink tokens that
        windowed layers keep attending to; replaces the checkpoint's own windows."""
        if len(windows) != self.arch.num_layers:
            raise InvalidArgument(f"{len(windows)} attention windows for "
                                  f"{self.arch.num_layers} layers")
        self.model.windows = list(windows)
        self.model.window_set = set(windows)
        self.sink_tokens = sink_tokens

    def allocate_host_kv_cache(self, num_blocks: int) -> None:
        """Host memory for num_blocks KV blocks that offload_block / onboard_block move."""
        self.host_pool = HostKVPool(self._cache(), num_blocks)

    def offload_block(self, block: int, slot: int) -> None:
        """Copies KV cache block `block` (every layer, K and V) into host slot `slot`."""
        assert self.host_pool is not None
        self.host_pool.offload(block, slot)

    def onboard_block(self, slot: int, block: int) -> None:
        """Copies host slot `slot` back into KV cache block `block`."""
        assert self.host_pool is not None
        self.host_pool.onboard(slot, block)

    def set_lora_source(self, source: LoraSource | None) -> None:
        """The adapter provider (the executor's LoRA cache) for chunks with a task id."""
        self.lora_source = source

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        with torch.inference_mode():
            self._cache().copy_blocks(pairs)

    def _cache(self) -> KVCache:
        if self.kv_cache is None:
            raise Unavailable("KV cache is not allocated: call allocate_kv_cache first")
        return self.kv_cache

    # -- forward ----------------------------------------------------------------------

    def _check(self, chunks: list[SeqChunk], cache: KVCache) -> int:
        """Per-chunk checks, O(chunks). The ids themselves are checked where they are
        used: on CPU, torch's embedding and index ops and the decode kernel raise
        IndexError for one out of range, which forward() turns into InvalidArgument."""
        max_end = 0
        for chunk in chunks:
            n = len(chunk.token_ids)
            if n == 0:
                raise InvalidArgument("SeqChunk with no tokens")
            if chunk.start_pos < 0:
                raise InvalidArgument(f"SeqChunk start_pos {chunk.start_pos} < 0")
            if chunk.logits not in _LOGITS_MODES:
                raise InvalidArgument(f"SeqChunk logits '{chunk.logits}' not in {_LOGITS_MODES}")
            end = chunk.start_pos + n
            needed = (end + cache.block_size - 1) // cache.block_size
            table = chunk.block_table
            if len(table) < needed:
                raise InvalidArgument(
                    f"block table has {len(table)} blocks, {needed} needed for {end} tokens"
                )
            max_end = max(max_end, end)
        return max_end

    def _raise_bad_ids(self, chunks: list[SeqChunk], cache: KVCache) -> None:
        """InvalidArgument naming the first chunk with a token or block id out of range.
        A Python scan of every id: run after a CPU forward failed, and before every
        forward elsewhere (on CUDA an out-of-range index is a device-side assert that
        poisons the context)."""
        vocab = self.arch.vocab_size
        for i, chunk in enumerate(chunks):
            end = chunk.start_pos + len(chunk.token_ids)
            table = chunk.block_table[: (end + cache.block_size - 1) // cache.block_size]
            if min(table) < FREED_BLOCK or max(table) >= cache.num_blocks:
                raise InvalidArgument(f"chunk {i}: block id out of range [0, {cache.num_blocks})")
            if min(table[chunk.start_pos // cache.block_size :]) < 0:
                raise InvalidArgument(f"chunk {i}: the new tokens' blocks must not be freed")
            limit = vocab + (0 if chunk.prompt_table is None else chunk.prompt_table.shape[0])
            if min(chunk.token_ids) < 0 or max(chunk.token_ids) >= limit:
                raise InvalidArgument(f"chunk {i}: token id out of range [0, {limit})")

    def validate(self, chunks: list[SeqChunk]) -> None:
        """Every check forward makes on the chunks, ids included, without running them
        (tensor parallelism checks before the ranks start a step together)."""
        cache = self._cache()
        self._check(chunks, cache)
        self._raise_bad_ids(chunks, cache)

    def forward(self, chunks: list[SeqChunk]) -> torch.Tensor:
        """One batched forward over all chunks. Writes their K/V into the cache and
        returns float32 logits [rows, vocab]: per chunk in order, 1 row for "last",
        len(token_ids) for "all", none for "none"."""
        cache = self._cache()
        if not chunks:
            return torch.empty(0, self.arch.vocab_size, dtype=torch.float32, device=self.device)
        max_end = self._check(chunks, cache)
        if self.device.type != "cpu":
            self._raise_bad_ids(chunks, cache)
        with torch.inference_mode():
            try:
                return self._forward(chunks, cache, max_end)
            except IndexError:
                self._raise_bad_ids(chunks, cache)
                raise

    def _forward(self, chunks: list[SeqChunk], cache: KVCache, max_end: int) -> torch.Tensor:
        meta = build_step(chunks, cache.block_size, self.model.window_set, self.device,
                          self._attention_kernels, self.sink_tokens)
        embeds = self._prompt_embeddings(chunks, meta.chunk_rows, meta.input_ids)
        self.rope.ensure(max_end)
        cos = self.rope.cos.index_select(0, meta.positions)
        sin = self.rope.sin.index_select(0, meta.positions)
        self._dynamic_rope(chunks, meta.chunk_rows, cos, sin)
        lora = self._lora.build(chunks, meta.chunk_rows, self.lora_source, self.device)
        hidden = self.model.forward(meta, cache, cos, sin, lora, embeds)
        if meta.num_logit_rows == 0 or self.model.head is None:  # (a worker rank)
            return torch.empty(0, self.arch.vocab_size, dtype=torch.float32, device=self.device)
        return self.model.logits(hidden)

    def _prompt_embeddings(self, chunks: list[SeqChunk], rows: list[int],
                           input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """p-tuning: the stream rows whose token ids are past the vocabulary and the rows
        of their chunk's prompt table they embed as. Those ids become 0 in input_ids so
        the vocabulary lookup stays in range (its result is overwritten)."""
        vocab = self.arch.vocab_size
        where: list[torch.Tensor] = []
        vectors: list[torch.Tensor] = []
        for chunk, first in zip(chunks, rows, strict=True):
            if chunk.prompt_table is None or max(chunk.token_ids) < vocab:
                continue
            ids = torch.tensor(chunk.token_ids)
            fake = (ids >= vocab).nonzero().flatten()
            where.append(fake + first)
            table = chunk.prompt_table.to(device=self.device, dtype=self.arch.dtype)
            vectors.append(table[(ids[fake] - vocab).to(self.device)])
        if not where:
            return None
        positions = torch.cat(where).to(self.device)
        input_ids.index_fill_(0, positions, 0)
        return positions, torch.cat(vectors)

    def _dynamic_rope(
        self, chunks: list[SeqChunk], rows: list[int], cos: torch.Tensor, sin: torch.Tensor
    ) -> None:
        # Dynamic-NTK rope changes the frequencies once a sequence outgrows
        # max_position_embeddings; transformers recomputes them from the current length.
        if not self.rope.dynamic:
            return
        for chunk, first in zip(chunks, rows, strict=True):
            end = chunk.start_pos + len(chunk.token_ids)
            if self.rope.needs_dynamic(end):
                positions = torch.arange(chunk.start_pos, end)
                c, s = self.rope.for_sequence(positions, end)
                cos[first : first + len(chunk.token_ids)] = c
                sin[first : first + len(chunk.token_ids)] = s
