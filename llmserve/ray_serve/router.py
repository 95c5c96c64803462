"""PrefixAwareRouter: Ray Serve's custom request router for llmserve replicas. A request
goes to the replica that was sent the longest prefix of its prompt (so its KV blocks
are most likely still cached there) unless that replica is busier than the least loaded
one by more than `imbalance`; otherwise, and for requests without a prompt, to the
least loaded replica (Ray's queue length cache, probing replicas it has no entry for).
A request naming a live replica in its `llmserve-replica` header goes there (operators
read one replica's statistics that way)."""

from __future__ import annotations

import logging
import random
from typing import Any

from ray.serve.request_router import (
    PendingRequest,
    ReplicaID,
    ReplicaResult,
    RequestRouter,
    RunningReplica,
)

from llmserve.ray_serve.forward import REPLICA_HEADER, ForwardedRequest
from llmserve.ray_serve.prefix import PrefixIndex, chunk_hashes

log = logging.getLogger(__name__)


class PrefixAwareRouter(RequestRouter):
    def initialize_state(self, chunk_chars: int = 64, chunk_tokens: int = 32,
                         imbalance: int = 8, capacity: int = 200_000, **_: Any) -> None:
        self.chunk_chars = chunk_chars
        self.chunk_tokens = chunk_tokens
        self.imbalance = imbalance
        self.index = PrefixIndex(capacity)
        self.prefix_routed = 0  # requests sent to a replica holding their prefix

    @staticmethod
    def _request(pending: PendingRequest) -> ForwardedRequest | None:
        return next((a for a in pending.args if isinstance(a, ForwardedRequest)), None)

    def _hashes(self, pending: PendingRequest) -> list[int]:
        cached = getattr(pending, "_llmserve_hashes", None)
        if cached is None:
            req = self._request(pending)
            cached = (chunk_hashes(req, self.chunk_chars, self.chunk_tokens)
                      if req is not None else [])
            pending._llmserve_hashes = cached  # type: ignore[attr-defined]
        return cached

    def _pinned(self, pending: PendingRequest,
                candidates: list[RunningReplica]) -> RunningReplica | None:
        req = self._request(pending)
        name = next((v for k, v in req.headers if k.lower() == REPLICA_HEADER),
                    None) if req is not None else None
        if name is None:
            return None
        wanted = name.decode("latin-1")
        return next((r for r in candidates if r.replica_id.to_full_id_str() == wanted), None)

    def _queue_len(self, replica: RunningReplica) -> int:
        known = self.replica_queue_len_cache.get(replica.replica_id)
        return 0 if known is None else known

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        if pending_request is None or not candidate_replicas:
            return [candidate_replicas] if candidate_replicas else []
        # without this the base loop retries at once, spinning while every replica is full
        pending_request.routing_context.should_backoff = True
        pinned = self._pinned(pending_request, candidate_replicas)
        if pinned is not None:
            return [[pinned]]
        hashes = self._hashes(pending_request)
        if hashes:
            by_id = {r.replica_id: r for r in candidate_replicas}
            holders, _ = self.index.match(hashes, by_id)
            if holders:
                least = min(self._queue_len(r) for r in candidate_replicas)
                preferred = [by_id[i] for i in holders
                             if self._queue_len(by_id[i]) - least <= self.imbalance]
                if preferred:
                    # the holders first; if their queues are full, the least loaded of all
                    return [preferred, self._shuffled(candidate_replicas)]
        return [self._shuffled(candidate_replicas)]

    @staticmethod
    def _shuffled(replicas: list[RunningReplica]) -> list[RunningReplica]:
        """Ray takes the first of equally loaded replicas: shuffled, ties go anywhere."""
        return random.sample(replicas, len(replicas))

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID,
                          result: ReplicaResult) -> None:
        hashes = self._hashes(pending_request)
        if hashes:
            _, depth = self.index.match(hashes, [replica_id])
            self.prefix_routed += bool(depth)
            self.index.insert(hashes, replica_id)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self.index.drop(replica_id)

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        gone = set(self.curr_replicas) - {r.replica_id for r in replicas}
        super().update_replicas(replicas)
        for replica_id in gone:
            self.index.drop(replica_id)
