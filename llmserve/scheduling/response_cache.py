"""The server's response cache, Triton's `local` cache: one LRU store bounded in bytes and
shared by every model, the request key (model, version, inputs, requested outputs) and the
`--cache-config` settings that size it. How a model uses it is in cache_use.py.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmserve.core.datatypes import serialize_bytes_tensor
from llmserve.core.errors import InvalidArgument
from llmserve.core.types import InferenceResponse, RequestedOutput, Tensor

log = logging.getLogger(__name__)

LOCAL = "local"


def cache_size(cache_config: dict[str, str]) -> int | None:
    """Bytes of the local cache from `--cache-config` settings ({"cache": name, key:
    value, ...}); None when no cache is configured. Raises InvalidArgument as Triton's
    cache creation fails: an unknown cache, or no valid `size`."""
    if not cache_config:
        return None
    name = cache_config.get("cache", "")
    if name != LOCAL:
        raise InvalidArgument(f"unable to find cache '{name}': llmserve has only the "
                              f"'{LOCAL}' response cache (--cache-config local,size=BYTES)")
    size = cache_config.get("size")
    if size is None:
        raise InvalidArgument("Failed to initialize LocalCache: config didn't contain a valid "
                              "'size' field.")
    try:
        value = int(size)
    except ValueError:
        value = -1
    if value < 0:
        raise InvalidArgument(f"Failed to initialize LocalCache: 'size' must be a non-negative "
                              f"number of bytes, got '{size}'")
    for key in sorted(set(cache_config) - {"cache", "size"}):
        log.warning("--cache-config local,%s: the local cache has no setting '%s'; ignored",
                    key, key)
    return value


# -- the key ---------------------------------------------------------------------------
def _tensor_bytes(t: Tensor) -> bytes:
    if t.datatype == "BYTES":
        return serialize_bytes_tensor(t.data)
    return np.ascontiguousarray(t.data).tobytes()


def request_key(model: str, version: int, inputs: dict[str, Tensor],
                requested: list[RequestedOutput] | None) -> bytes:
    """What Triton hashes (model name, version, each input's name and bytes, inputs in name
    order) plus each input's datatype and shape and the requested outputs, so that equal
    bytes in another shape or a request for other outputs never share an entry. A 128-bit
    BLAKE2 digest; every part is length-prefixed so parts cannot run together."""
    h = hashlib.blake2b(digest_size=16)

    def part(data: bytes) -> None:
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)

    part(model.encode())
    part(str(int(version)).encode())
    for name in sorted(inputs):
        t = inputs[name]
        part(name.encode())
        part(f"{t.datatype}:{np.asarray(t.data).dtype.str}:{list(t.data.shape)}".encode())
        part(_tensor_bytes(t))
    if requested:
        for ro in requested:
            part(b"out:" + ro.name.encode())
    else:
        part(b"all outputs")
    return h.digest()


# -- entries ---------------------------------------------------------------------------
def _copy(t: Tensor) -> Tensor:
    return Tensor(t.name, t.datatype, np.array(t.data, copy=True))


def _data_size(t: Tensor) -> int:
    if t.data.dtype == np.object_:
        return len(serialize_bytes_tensor(t.data))
    return int(t.data.nbytes)


def _entry_size(outputs: list[Tensor], parameters: dict[str, Any]) -> int:
    """Bytes as Triton's cache entry lays a response out: an output count, then per output
    its name, datatype, shape and data, each with a size field (plus the parameters)."""
    size = 4 + len(repr(parameters)) if parameters else 4
    for t in outputs:
        size += 8 + (8 + len(t.name)) + (8 + len(t.datatype)) + 8 * (1 + t.data.ndim)
        size += 8 + _data_size(t)
    return size


@dataclass(slots=True)
class CachedResponse:
    """A private copy of one successful final response's outputs and parameters."""

    outputs: list[Tensor]
    parameters: dict[str, Any]
    nbytes: int

    @classmethod
    def of(cls, response: InferenceResponse) -> CachedResponse:
        outputs = [_copy(t) for t in response.outputs]
        params = dict(response.parameters)
        return cls(outputs, params, _entry_size(outputs, params))

    def response(self, model: str, version: int, request_id: str) -> InferenceResponse:
        """A fresh response for a hit; its arrays are copies, so a caller that writes to
        them (a BLS caller, say) cannot change the entry."""
        return InferenceResponse(model, version, request_id, [_copy(t) for t in self.outputs],
                                 dict(self.parameters), error=None, final=True)


class Inserted(enum.Enum):
    NEW = "new"
    EXISTS = "exists"  # another request with the same key filled it first
    TOO_LARGE = "too_large"


class ResponseCache:
    """Thread-safe LRU of CachedResponse bounded by `capacity` bytes, with the counters
    Triton's local cache reports (nv_cache_num_entries, ..._hits, ..._evictions, ...)."""

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self._entries: OrderedDict[bytes, CachedResponse] = OrderedDict()
        self._used = 0
        self._lock = threading.Lock()
        self.lookups = self.hits = self.misses = self.evictions = 0
        self.lookup_ns = self.insert_ns = 0

    def lookup(self, key: bytes) -> CachedResponse | None:
        start = time.monotonic_ns()
        with self._lock:
            self.lookups += 1
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
            else:
                self.hits += 1
                self._entries.move_to_end(key)
            self.lookup_ns += time.monotonic_ns() - start
        return entry

    def insert(self, key: bytes, response: InferenceResponse) -> Inserted:
        start = time.monotonic_ns()
        try:
            with self._lock:
                if key in self._entries:
                    return Inserted.EXISTS
            entry = CachedResponse.of(response)  # copy outside the lock
            if entry.nbytes > self.capacity:
                log.warning("response of model '%s' not cached: its %d bytes exceed the cache "
                            "size of %d bytes", response.model_name, entry.nbytes, self.capacity)
                return Inserted.TOO_LARGE
            with self._lock:
                if key in self._entries:
                    return Inserted.EXISTS
                while self._used + entry.nbytes > self.capacity:
                    _, evicted = self._entries.popitem(last=False)
                    self._used -= evicted.nbytes
                    self.evictions += 1
                self._entries[key] = entry
                self._used += entry.nbytes
                return Inserted.NEW
        finally:
            with self._lock:
                self.insert_ns += time.monotonic_ns() - start

    def snapshot(self) -> dict[str, float]:
        """The server-wide cache gauges, named as Triton's local cache names them."""
        with self._lock:
            return {
                "nv_cache_num_entries": len(self._entries),
                "nv_cache_num_lookups": self.lookups,
                "nv_cache_num_hits": self.hits,
                "nv_cache_num_misses": self.misses,
                "nv_cache_num_evictions": self.evictions,
                "nv_cache_util": self._used / self.capacity if self.capacity else 0.0,
                "nv_cache_lookup_duration": self.lookup_ns // 1000,
                "nv_cache_insertion_duration": self.insert_ns // 1000,
            }

    def used_bytes(self) -> int:
        with self._lock:
            return self._used
