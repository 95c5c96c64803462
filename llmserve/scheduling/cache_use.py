"""How a model version uses the server's response cache, as Triton's schedulers do: look
the request up before it is queued (a hit answers at once and never reaches an instance),
and on a miss insert the successful final response, recording hit and miss statistics.
For an ensemble, the top-level request is looked up and its final response cached.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from llmserve.core.types import InferenceRequest, InferenceResponse
from llmserve.scheduling.request import SchedRequest, now_ns
from llmserve.scheduling.response_cache import Inserted, ResponseCache, request_key

log = logging.getLogger(__name__)


class ModelCache:
    """One model version's view of the shared cache; `stats` is its ModelStats."""

    def __init__(self, cache: ResponseCache, name: str, version: int, stats: Any):
        self.cache = cache
        self.name = name
        self.version = version
        self.stats = stats

    @classmethod
    def for_model(cls, server: Any, config: mc.ModelConfig, version: int,
                  stats: Any) -> ModelCache | None:
        """The model's cache when both its config (`response_cache { enable: true }`) and
        the server (`--cache-config`) turn caching on, else None."""
        if not config.response_cache.enable:
            return None
        cache = getattr(server, "response_cache", None)
        if cache is None:
            log.warning("model '%s': response_cache is enabled, but the server has no "
                        "response cache (start it with --cache-config local,size=BYTES)",
                        config.name)
            return None
        return cls(cache, config.name, version, stats)

    def _key(self, request: InferenceRequest) -> bytes:
        return request_key(self.name, self.version, request.inputs, request.requested_outputs)

    def answer(self, sreq: SchedRequest) -> bool:
        """Send the cached response for `sreq` and return True on a hit; on a miss, arrange
        for its final response to fill the cache and return False."""
        start = now_ns()
        key = self._key(sreq.request)
        entry = self.cache.lookup(key)
        lookup_ns = now_ns() - start
        if entry is None:
            sreq.sink.add_final_callback(lambda resp: self._fill(key, resp, lookup_ns))
            return False
        self.stats.queued(start - (sreq.request.arrival_ns or start))
        self.stats.cache_hit(lookup_ns)
        sreq.sink.send(entry.response(self.name, sreq.model_version, sreq.request.id))
        return True

    def _fill(self, key: bytes, response: InferenceResponse, lookup_ns: int) -> None:
        if response.error is not None:
            return  # only successful responses are cached
        start = now_ns()
        result = self.cache.insert(key, response)
        if result is not Inserted.EXISTS:  # Triton counts no miss when another filled it
            self.stats.cache_miss(lookup_ns + now_ns() - start)

    def ensemble(self, request: InferenceRequest,
                 responses: AsyncIterator[InferenceResponse]) -> EnsembleThroughCache:
        """An ensemble's responses through the cache: a hit skips its steps entirely."""
        return EnsembleThroughCache(self, request, responses)


class EnsembleThroughCache:
    """The responses of one ensemble request, answered from the cache when it holds them
    (then `hit` is True) or else by its steps, whose final response fills the cache."""

    def __init__(self, owner: ModelCache, request: InferenceRequest,
                 responses: AsyncIterator[InferenceResponse]):
        self.hit = False
        self._responses = responses
        self._stream = self._run(owner, request)

    def __aiter__(self) -> EnsembleThroughCache:
        return self

    async def __anext__(self) -> InferenceResponse:
        return await self._stream.__anext__()

    async def aclose(self) -> None:
        await self._stream.aclose()
        await self._responses.aclose()

    async def _run(self, owner: ModelCache, request: InferenceRequest
                   ) -> AsyncIterator[InferenceResponse]:
        start = now_ns()
        key = owner._key(request)
        entry = owner.cache.lookup(key)
        lookup_ns = now_ns() - start
        if entry is not None:
            self.hit = True
            owner.stats.cache_hit(lookup_ns)
            yield entry.response(owner.name, owner.version, request.id)
            return
        async for resp in self._responses:
            if resp.final:
                owner._fill(key, resp, lookup_ns)
            yield resp
