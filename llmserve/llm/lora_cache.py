"""The executor's LoRA cache (TensorRT-LLM's PEFT cache): checks lora_weights/lora_config
tensors against the model, keeps adapters in paged host memory and paged device memory
with LRU eviction of adapters no request holds, prefetches adapters from a folder at
start-up, and hands the engine the device-resident adapters of each step."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from llmserve.core.errors import InternalError, InvalidArgument, Unavailable
from llmserve.llm.config import PeftCacheConfig
from llmserve.llm.engine.config import ArchConfig
from llmserve.llm.engine.lora import (
    STANDARD_MODULES,
    LoraAdapter,
    ModuleTarget,
    module_name,
    module_targets,
)
from llmserve.llm.request import LoraConfig

logger = logging.getLogger(__name__)

DEFAULT_HOST_CACHE_BYTES = 1 << 30  # lora_cache_host_memory_bytes default (1 GiB)
DEFAULT_DEVICE_CACHE_FRACTION = 0.05  # lora_cache_gpu_memory_fraction default
MISSING_TASK = "LoRA task {} not found in cache. Please send LoRA weights with request"
WEIGHTS_FILE, CONFIG_FILE = "model.lora_weights.npy", "model.lora_config.npy"

_cpu_warned = False

# (module id, layer, adapter size, the row's weights: "in" then "out", flattened)
ParsedRow = tuple[int, int, int, torch.Tensor]


@dataclass(slots=True)
class LoraCacheStats:
    page_bytes: int
    host_pages_total: int
    host_pages_used: int
    device_pages_total: int  # a single-level (CPU) cache reports its host pages here
    device_pages_used: int
    num_host_tasks: int
    num_device_tasks: int
    num_pinned_tasks: int  # adapters held by queued or running requests
    num_pins: int  # requests holding an adapter


@dataclass(frozen=True, slots=True)
class PageLayout:
    """A page is a flat buffer of page_elems values; each module-layer row of an adapter
    takes rank x (in + out) values rounded up to whole slots, inside one page. A page
    holds an adapter of the optimal size on every standard module of every layer, and at
    least one row of max_adapter_size on the widest module."""

    slot_elems: int
    page_elems: int

    @classmethod
    def for_model(cls, targets: dict[int, ModuleTarget], num_layers: int,
                  optimal_adapter_size: int, max_adapter_size: int) -> PageLayout:
        widths = [t.row_elems_per_rank for t in targets.values()]
        slot = min(widths)
        optimal = optimal_adapter_size * num_layers * sum(
            targets[m].row_elems_per_rank for m in STANDARD_MODULES)
        needed = max(optimal, max_adapter_size * max(widths))
        return cls(slot, -(-needed // slot) * slot)

    def row_elems(self, rank: int, target: ModuleTarget) -> int:
        return -(-rank * target.row_elems_per_rank // self.slot_elems) * self.slot_elems


class PagePool:
    """num_pages equal pages of one dtype on one device; a page's memory is allocated
    when it is handed out and freed when it is given back."""

    def __init__(self, num_pages: int, page_elems: int, dtype: torch.dtype,
                 device: torch.device):
        self.num_pages, self.page_elems, self.dtype, self.device = (
            num_pages, page_elems, dtype, device)
        self.pages: dict[int, torch.Tensor] = {}
        self._free = list(range(num_pages - 1, -1, -1))

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return len(self.pages)

    def alloc(self, n: int) -> list[int]:
        assert n <= len(self._free)
        ids = [self._free.pop() for _ in range(n)]
        for i in ids:
            self.pages[i] = torch.empty(self.page_elems, dtype=self.dtype, device=self.device)
        return ids

    def release(self, ids: list[int]) -> None:
        for i in ids:
            del self.pages[i]
            self._free.append(i)


@dataclass(slots=True, eq=False)
class _Task:
    task_id: int
    rows: list[tuple[int, int, int]]  # (module id, layer, adapter size)
    places: list[tuple[int, int]]  # (page of the task, element offset) of each row
    host_pages: list[int]
    device_pages: list[int] | None = None
    adapter: LoraAdapter | None = None  # views on the compute device's pages
    refs: int = 0  # requests holding it

    @property
    def num_pages(self) -> int:
        return len(self.host_pages)


@dataclass(slots=True)
class _Level:
    pool: PagePool
    lru: OrderedDict[int, None] = field(default_factory=OrderedDict)  # first: least recent


class LoraCache:
    """Adapters by task id. Host level: every known adapter (bounded by host bytes).
    Device level: the adapters the engine computes with (bounded by device bytes); with
    device_bytes None (CPU) there is one level and the device level IS host memory.
    Thread-safe: requests are admitted on callers' threads, steps run on the loop's."""

    def __init__(self, arch: ArchConfig, config: PeftCacheConfig | None = None, *,
                 dtype: torch.dtype, device: torch.device | str = "cpu",
                 device_bytes: int | None = None) -> None:
        config = config or PeftCacheConfig()
        if config.optimal_adapter_size < 1 or config.max_adapter_size < 1:
            raise InvalidArgument("lora_cache_optimal_adapter_size and "
                                  "lora_cache_max_adapter_size must be >= 1")
        self.config = config
        self.num_layers = arch.num_layers
        self.targets = module_targets(arch)
        self.max_adapter_size = config.max_adapter_size
        self.layout = PageLayout.for_model(self.targets, arch.num_layers,
                                           config.optimal_adapter_size, config.max_adapter_size)
        self.dtype = dtype
        self.device = torch.device(device)
        self.page_bytes = self.layout.page_elems * torch.empty((), dtype=dtype).element_size()
        host_bytes = config.host_cache_size or DEFAULT_HOST_CACHE_BYTES
        if host_bytes < self.page_bytes:
            raise InvalidArgument(
                f"lora_cache_host_memory_bytes ({host_bytes}) is smaller than one LoRA cache "
                f"page ({self.page_bytes} bytes for this model and adapter sizes)")
        self.host = _Level(PagePool(host_bytes // self.page_bytes, self.layout.page_elems,
                                    dtype, torch.device("cpu")))
        self.dev: _Level | None = None
        if device_bytes is not None:
            pages = device_bytes // self.page_bytes
            if pages == 0:
                logger.warning("LoRA device cache of %d bytes holds no page of %d bytes: "
                               "LoRA requests will fail", device_bytes, self.page_bytes)
            self.dev = _Level(PagePool(pages, self.layout.page_elems, dtype, self.device))
        self.tasks: dict[int, _Task] = {}
        self.pins: dict[int, int] = {}  # request id -> task id
        self._lock = threading.Lock()
        logger.info("LoRA cache: pages of %.1f KiB, %d host pages%s", self.page_bytes / 1024,
                    self.host.pool.num_pages,
                    "" if self.dev is None else f", {self.dev.pool.num_pages} device pages")

    # -- validation ---------------------------------------------------------------------

    def parse(self, weights: object, config: object) -> list[ParsedRow]:
        """TensorRT-LLM's lora_weights [rows, D x Hi + Ho x D] and lora_config [rows, 3]
        (module id, layer, adapter size; a leading batch dim of 1 is accepted) -> rows.
        Raises InvalidArgument naming the offending row."""
        w, c = torch.as_tensor(weights), torch.as_tensor(config)
        if w.dim() == 3 and w.shape[0] == 1:
            w = w[0]
        if c.dim() == 3 and c.shape[0] == 1:
            c = c[0]
        if c.dim() != 2 or c.shape[1] != 3 or c.shape[0] == 0:
            raise InvalidArgument("lora_config must have shape [num_lora_modules_layers, 3] "
                                  f"with at least one row, got {list(c.shape)}")
        if w.dim() != 2 or w.shape[0] != c.shape[0]:
            raise InvalidArgument(f"lora_weights must have shape [{c.shape[0]}, D x Hi + Ho x D]"
                                  f" (one row per lora_config row), got {list(w.shape)}")
        if not w.is_floating_point():
            raise InvalidArgument(f"lora_weights must be floating point, got {w.dtype}")
        if not bool(torch.isfinite(w).all()):
            raise InvalidArgument("lora_weights contain NaN or infinite values")
        supported = ", ".join(f"{int(m)} {module_name(m)}" for m in self.targets)
        rows: list[ParsedRow] = []
        seen: set[tuple[int, int]] = set()
        for i, (module, layer, rank) in enumerate(c.to(torch.int64).tolist()):
            target = self.targets.get(module)
            if target is None:
                raise InvalidArgument(f"lora_config row {i}: module id {module} is not "
                                      f"supported (supported: {supported})")
            if not 0 <= layer < self.num_layers:
                raise InvalidArgument(f"lora_config row {i}: layer {layer} is out of range "
                                      f"[0, {self.num_layers})")
            if rank < 1:
                raise InvalidArgument(f"lora_config row {i}: adapter size must be >= 1")
            if rank > self.max_adapter_size:
                raise InvalidArgument(
                    f"lora_config row {i}: adapter size {rank} exceeds "
                    f"lora_cache_max_adapter_size ({self.max_adapter_size})")
            if (module, layer) in seen:
                raise InvalidArgument(f"lora_config row {i}: {module_name(module)} of layer "
                                      f"{layer} appears twice")
            seen.add((module, layer))
            need = rank * target.row_elems_per_rank
            if w.shape[1] < need:
                raise InvalidArgument(
                    f"lora_weights row {i} has {w.shape[1]} values; {module_name(module)} "
                    f"with adapter size {rank} needs {rank} x {target.in_dim} + "
                    f"{target.out_dim} x {rank} = {need}")
            rows.append((module, layer, rank, w[i, :need]))
        return rows

    # -- requests -----------------------------------------------------------------------

    def acquire(self, request_id: int, lora: LoraConfig) -> None:
        """Pin lora's adapter for request_id until release(request_id), storing its
        weights first when the request carries them. InvalidArgument for bad tensors or
        an unknown task sent without weights; Unavailable when pinned adapters fill the
        cache."""
        has_w, has_c = lora.weights is not None, lora.config is not None
        if has_w != has_c:
            raise InvalidArgument("Request for LoRA inference must have both lora_weights and "
                                  "lora_config (or neither, for an adapter already cached)")
        rows = self.parse(lora.weights, lora.config) if has_w else None
        task_id = int(lora.task_id)
        self._warn_single_level()
        with self._lock:
            if request_id in self.pins:
                raise InternalError(f"request {request_id} already holds a LoRA adapter")
            task = self.tasks.get(task_id)
            if task is None:
                if rows is None:
                    raise InvalidArgument(MISSING_TASK.format(task_id))
                task = self._put(task_id, rows)
            task.refs += 1
            self.pins[request_id] = task_id
            self.host.lru.move_to_end(task_id)

    def release(self, request_id: int) -> None:
        """Drop request_id's pin (no-op for a request without one)."""
        with self._lock:
            task_id = self.pins.pop(request_id, None)
            if task_id is not None:
                self.tasks[task_id].refs -= 1

    def put(self, task_id: int, weights: object, config: object) -> None:
        """Store an adapter (unpinned; a cached task id is kept as it is)."""
        rows = self.parse(weights, config)
        with self._lock:
            if task_id in self.tasks:
                self.host.lru.move_to_end(task_id)
            else:
                self._put(task_id, rows)

    def has_task(self, task_id: int) -> bool:
        with self._lock:
            return task_id in self.tasks

    # -- the engine's side --------------------------------------------------------------

    def adapters(self, task_ids: list[int]) -> dict[int, LoraAdapter]:
        """The adapters of one step on the compute device, loading from host pages and
        evicting device-resident adapters this step does not use, least recent first."""
        with self._lock:
            tasks = []
            for task_id in task_ids:
                task = self.tasks.get(task_id)
                if task is None:  # held tasks cannot be evicted: a pin is missing
                    raise InternalError(MISSING_TASK.format(task_id))
                tasks.append(task)
            if self.dev is None:
                return {t.task_id: self._host_adapter(t) for t in tasks}
            return {t.task_id: self._device_adapter(t, set(task_ids)) for t in tasks}

    def stats(self) -> LoraCacheStats:
        with self._lock:
            level = self.dev or self.host
            return LoraCacheStats(
                page_bytes=self.page_bytes,
                host_pages_total=self.host.pool.num_pages,
                host_pages_used=self.host.pool.num_used,
                device_pages_total=level.pool.num_pages,
                device_pages_used=level.pool.num_used,
                num_host_tasks=len(self.tasks),
                num_device_tasks=len(level.lru),
                num_pinned_tasks=sum(1 for t in self.tasks.values() if t.refs),
                num_pins=len(self.pins),
            )

    # -- prefetch -----------------------------------------------------------------------

    def load_prefetch_dir(self, path: str | Path) -> list[int]:
        """Load <path>/<task_id>/model.lora_weights.npy + model.lora_config.npy (the
        layout of TensorRT-LLM's lora_prefetch_dir and its hf_lora_convert.py) for every
        numeric sub-folder; returns the task ids loaded, in order."""
        root = Path(path)
        if not root.is_dir():
            raise InvalidArgument(f"lora_prefetch_dir '{root}' is not a folder")
        loaded = []
        for sub in sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.name):
            if not sub.name.isdigit():
                logger.warning("lora_prefetch_dir: skipping '%s' (not a numeric task id)", sub)
                continue
            files = [sub / WEIGHTS_FILE, sub / CONFIG_FILE]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise InvalidArgument(f"lora_prefetch_dir: '{sub}' lacks {', '.join(missing)}")
            try:
                weights = np.load(files[0])
                config = np.load(files[1])
                self.put(int(sub.name), weights, config)
            except InvalidArgument as exc:
                raise InvalidArgument(f"lora_prefetch_dir: '{sub}': {exc.message}") from None
            except Unavailable as exc:
                logger.warning("lora_prefetch_dir: '%s' not loaded: %s", sub, exc)
                continue
            loaded.append(int(sub.name))
        logger.info("prefetched %d LoRA adapters from %s", len(loaded), root)
        return loaded

    # -- internals (self._lock held) ----------------------------------------------------

    def _plan(self, rows: list[ParsedRow]) -> tuple[int, list[tuple[int, int]]]:
        page, offset, places = 0, 0, []
        for module, _layer, rank, _w in rows:
            n = self.layout.row_elems(rank, self.targets[module])
            if offset + n > self.layout.page_elems:
                page, offset = page + 1, 0
            places.append((page, offset))
            offset += n
        return page + 1, places

    def _put(self, task_id: int, rows: list[ParsedRow]) -> _Task:
        num_pages, places = self._plan(rows)
        self._make_room(self.host, num_pages, set(), "host", "lora_cache_host_memory_bytes")
        pages = self.host.pool.alloc(num_pages)
        for (_m, _l, _r, w), (page, offset) in zip(rows, places, strict=True):
            self.host.pool.pages[pages[page]][offset : offset + w.numel()].copy_(w)
        task = _Task(task_id, [(m, layer, r) for m, layer, r, _ in rows], places, pages)
        self.tasks[task_id] = task
        self.host.lru[task_id] = None
        logger.debug("LoRA task %d cached: %d rows in %d host pages", task_id, len(rows),
                     num_pages)
        return task

    def _make_room(self, level: _Level, need: int, keep: set[int], name: str,
                   knob: str) -> None:
        pool = level.pool
        if need > pool.num_pages:
            raise InvalidArgument(
                f"LoRA adapter needs {need} cache pages of {self.page_bytes} bytes; the {name} "
                f"LoRA cache has only {pool.num_pages} ({knob})")
        evictable = [t for t in level.lru if t not in keep
                     and (self.tasks[t].refs == 0 or level is not self.host)]
        avail = pool.num_free + sum(self._pages_at(level, t) for t in evictable)
        if avail < need:
            raise Unavailable(
                f"LoRA {name} cache is full: {need} pages needed, {pool.num_free} free of "
                f"{pool.num_pages}, the rest held by adapters in use ({knob})")
        for task_id in evictable:
            if pool.num_free >= need:
                break
            if level is self.host:
                self._drop(self.tasks[task_id])
            else:
                self._evict_device(self.tasks[task_id])

    def _pages_at(self, level: _Level, task_id: int) -> int:
        task = self.tasks[task_id]
        if level is self.host:
            return task.num_pages
        return len(task.device_pages or ())

    def _drop(self, task: _Task) -> None:
        logger.debug("LoRA task %d evicted from the cache", task.task_id)
        if task.device_pages is not None:
            self._evict_device(task)
        self.host.pool.release(task.host_pages)
        del self.host.lru[task.task_id]
        del self.tasks[task.task_id]
        task.adapter = None

    def _evict_device(self, task: _Task) -> None:
        assert self.dev is not None and task.device_pages is not None
        self.dev.pool.release(task.device_pages)
        del self.dev.lru[task.task_id]
        task.device_pages, task.adapter = None, None

    def _host_adapter(self, task: _Task) -> LoraAdapter:
        self.host.lru.move_to_end(task.task_id)
        if task.adapter is None:
            task.adapter = self._adapter(task, self.host.pool, task.host_pages)
        return task.adapter

    def _device_adapter(self, task: _Task, step: set[int]) -> LoraAdapter:
        dev = self.dev
        assert dev is not None
        if task.device_pages is None:
            self._make_room(dev, task.num_pages, step, "device",
                            "lora_cache_gpu_memory_fraction")
            task.device_pages = dev.pool.alloc(task.num_pages)
            for src, dst in zip(task.host_pages, task.device_pages, strict=True):
                dev.pool.pages[dst].copy_(self.host.pool.pages[src])
            task.adapter = self._adapter(task, dev.pool, task.device_pages)
            dev.lru[task.task_id] = None
        dev.lru.move_to_end(task.task_id)
        self.host.lru.move_to_end(task.task_id)
        assert task.adapter is not None
        return task.adapter

    def _adapter(self, task: _Task, pool: PagePool, pages: list[int]) -> LoraAdapter:
        rows = []
        for (module, layer, rank), (page, offset) in zip(task.rows, task.places, strict=True):
            n = rank * self.targets[module].row_elems_per_rank
            rows.append((module, layer, rank, pool.pages[pages[page]][offset : offset + n]))
        return LoraAdapter.from_rows(task.task_id, self.num_layers, rows, self.targets)

    def _warn_single_level(self) -> None:
        global _cpu_warned
        if self.dev is None and not _cpu_warned:
            _cpu_warned = True
            logger.warning("LoRA on CPU: the device level of the LoRA cache is host memory "
                           "(lora_cache_gpu_memory_fraction has no effect; "
                           "lora_cache_host_memory_bytes bounds the cache)")


def lora_cache_for(runner: object, config: PeftCacheConfig | None) -> LoraCache:
    """The LoRA cache of runner's model, attached as the runner's adapter source. On CUDA
    the device level gets lora_cache_gpu_memory_fraction (device_cache_percent) of the
    memory free now, after the weights and KV cache; on CPU it is the host level."""
    arch: ArchConfig = runner.arch  # type: ignore[attr-defined]
    device = torch.device(arch.device)
    device_bytes = None
    if device.type == "cuda":
        fraction = DEFAULT_DEVICE_CACHE_FRACTION
        if config is not None and config.device_cache_percent is not None:
            fraction = config.device_cache_percent
        if not 0.0 <= fraction <= 1.0:
            raise InvalidArgument(
                f"lora_cache_gpu_memory_fraction must be in [0, 1], got {fraction}")
        device_bytes = int(runner.available_memory_bytes() * fraction)  # type: ignore[attr-defined]
    cache = LoraCache(arch, config, dtype=arch.dtype, device=device, device_bytes=device_bytes)
    prefetch = config.lora_prefetch_dir if config is not None else None
    if prefetch:
        cache.load_prefetch_dir(prefetch)
    set_source = getattr(runner, "set_lora_source", None)
    if set_source is not None:
        set_source(cache)
    return cache
