"""Triton's rate limiter (--rate-limit execution_count): a model instance executes only
while it holds the resources its instance_group's rate_limiter names. Per-device resources
are counted per device, global ones once for the server. Unless --rate-limit-resource
gives a count, a resource has as many copies as the most that any one loaded instance
needs. Among instances waiting for resources, priority weights the choice: an instance of
priority 2 gets half the chances of one of priority 1 (stride scheduling on a virtual
clock)."""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field

from tritonclient.grpc import model_config_pb2 as mc

from llmserve.core.errors import InvalidArgument

GLOBAL = -1  # the device key of global resources


@dataclass(eq=False)
class Grantee:
    """One instance's claim: {(resource, device or GLOBAL): count} and its priority."""

    name: str
    needs: dict[tuple[str, int], int]
    priority: int
    clock: float = 0.0
    waiting: bool = False
    event: threading.Event = field(default_factory=threading.Event)


class RateLimiter:
    def __init__(self, resources: list[tuple[str, int, int | None]] | None = None):
        # --rate-limit-resource NAME:COUNT[:DEVICE]; without DEVICE it applies to the
        # global resource of that name and to that name on every device
        self._given: dict[tuple[str, int | None], int] = {
            (name, device): count for name, count, device in resources or []}
        self._lock = threading.Lock()
        self._grantees: set[Grantee] = set()
        self._in_use: dict[tuple[str, int], int] = defaultdict(int)
        self._queue: list[Grantee] = []
        self._clock = 0.0

    # -- registration -------------------------------------------------------------------
    def register(self, name: str, group: mc.ModelInstanceGroup, device: int) -> Grantee | None:
        """The claim of one instance of `group` on `device`, or None when the group names
        no rate_limiter (such an instance is never held back)."""
        if not group.HasField("rate_limiter"):
            return None
        needs: dict[tuple[str, int], int] = {}
        for res in group.rate_limiter.resources:
            key = (res.name, GLOBAL if getattr(res, "global") else device)
            needs[key] = needs.get(key, 0) + int(res.count)
        grantee = Grantee(name, needs, max(int(group.rate_limiter.priority), 1))
        with self._lock:
            for (res_name, dev), count in needs.items():
                if count > self._available(res_name, dev, extra=count):
                    raise InvalidArgument(
                        f"instance '{name}' needs {count} copies of resource '{res_name}'"
                        f"{'' if dev == GLOBAL else f' on device {dev}'} but only "
                        f"{self._available(res_name, dev)} are available "
                        "(--rate-limit-resource)")
            grantee.clock = self._clock
            self._grantees.add(grantee)
        return grantee

    def unregister(self, grantee: Grantee | None) -> None:
        if grantee is None:
            return
        with self._lock:
            self._grantees.discard(grantee)
            if grantee in self._queue:
                self._queue.remove(grantee)
            self._grant()

    def _available(self, name: str, device: int, extra: int = 0) -> int:
        given = self._given.get((name, None if device == GLOBAL else device))
        if given is None:
            given = self._given.get((name, None))
        if given is not None:
            return given
        # as many as the most that one instance needs (this one included)
        need = max([g.needs.get((name, device), 0) for g in self._grantees] + [extra])
        return need

    # -- execution ----------------------------------------------------------------------
    def acquire(self, grantee: Grantee | None, timeout: float | None = None) -> bool:
        """Blocks until `grantee` holds its resources (True), or timeout (False)."""
        if grantee is None:
            return True
        with self._lock:
            grantee.event.clear()
            grantee.waiting = True
            grantee.clock = max(grantee.clock, self._clock)
            self._queue.append(grantee)
            self._grant()
        if grantee.event.wait(timeout):
            return True
        with self._lock:
            if grantee.event.is_set():  # granted just now
                return True
            grantee.waiting = False
            if grantee in self._queue:
                self._queue.remove(grantee)
            return False

    def release(self, grantee: Grantee | None) -> None:
        if grantee is None:
            return
        with self._lock:
            for key, count in grantee.needs.items():
                self._in_use[key] -= count
            self._grant()

    def _fits(self, grantee: Grantee) -> bool:
        return all(self._in_use[key] + count <= self._available(*key)
                   for key, count in grantee.needs.items())

    def _grant(self) -> None:
        """Hands resources to waiting instances, the smallest virtual clock first."""
        while True:
            ready = [g for g in self._queue if self._fits(g)]
            if not ready:
                return
            g = min(ready, key=lambda x: x.clock)
            self._queue.remove(g)
            for key, count in g.needs.items():
                self._in_use[key] += count
            self._clock = g.clock
            g.clock += g.priority
            g.waiting = False
            g.event.set()

    def in_use(self) -> dict[tuple[str, int], int]:
        with self._lock:
            return {k: v for k, v in self._in_use.items() if v}
