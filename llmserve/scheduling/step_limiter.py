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
import collections
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

WAIT_LIMIT_S = 300.0


class StepLimiter:
    """One step's slots (all on the server's event loop): a waiter is a future that a
    release (or a cancelled request's poke) resolves, so freeing a slot costs no task."""

    def __init__(self, limit: int):
        self.limit = limit
        self.inflight = 0
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    async def acquire(self, cancelled: Callable[[], bool], ensemble: str, step: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_LIMIT_S
        while self.inflight >= self.limit and not cancelled():
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, max(0.0, deadline - loop.time()))
            except TimeoutError:
                log.error("ensemble '%s' could not schedule step %d (%d in flight, limit %d) "
                          "for %.0f s; proceeding to avoid a deadlock", ensemble, step,
                          self.inflight, self.limit, WAIT_LIMIT_S)
                break
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self.inflight += 1

    def release(self) -> None:
        self.inflight -= 1
        while self._waiters:  # the first waiter still waiting takes the slot
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def poke(self) -> None:
        """A waiting request may have been cancelled: every waiter looks again."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)


def limiters_for(config) -> list[StepLimiter] | None:
    """One limiter per step when the ensemble sets max_inflight_requests (> 0)."""
    limit = int(config.ensemble_scheduling.max_inflight_requests)
    if limit <= 0:
        return None
    log.info("ensemble model '%s' configured with max_inflight_requests: %d", config.name, limit)
    return [StepLimiter(limit) for _ in config.ensemble_scheduling.step]
