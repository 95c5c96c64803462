"""Triton's `ensemble_scheduling { max_inflight_requests: N }`: at most N requests in
flight at each step of an ensemble, shared by all of the ensemble's requests. A step
waits for a slot before it is sent and frees it when its final response arrives; while
its later steps are full, a decoupled step's next response waits (the ensemble paces a
decoupled step by what follows it), so memory stays bounded when a producer is faster
than its consumers. As in Triton, a request cancelled while it waits stops waiting, and
a wait of more than 5 minutes proceeds with an error in the log rather than deadlock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

WAIT_LIMIT_S = 300.0


class StepLimiter:
    """One step's slots (all on the server's event loop)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.inflight = 0
        self._changed: asyncio.Condition | None = None

    async def acquire(self, cancelled: Callable[[], bool], ensemble: str, step: int) -> None:
        if self._changed is None:
            self._changed = asyncio.Condition()
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(
                    lambda: cancelled() or self.inflight < self.limit), WAIT_LIMIT_S)
            except TimeoutError:
                log.error("ensemble '%s' could not schedule step %d (%d in flight, limit %d) "
                          "for %.0f s; proceeding to avoid a deadlock", ensemble, step,
                          self.inflight, self.limit, WAIT_LIMIT_S)
            self.inflight += 1

    def release(self) -> None:
        self.inflight -= 1
        if self._changed is not None:
            asyncio.ensure_future(self._notify())

    async def _notify(self) -> None:
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()

    def poke(self) -> None:
        """A waiting request may have been cancelled: let the waiters look again."""
        if self._changed is not None:
            asyncio.ensure_future(self._notify())


def limiters_for(config) -> list[StepLimiter] | None:
    """One limiter per step when the ensemble sets max_inflight_requests (> 0)."""
    limit = int(config.ensemble_scheduling.max_inflight_requests)
    if limit <= 0:
        return None
    log.info("ensemble model '%s' configured with max_inflight_requests: %d", config.name, limit)
    return [StepLimiter(limit) for _ in config.ensemble_scheduling.step]
