"""The request queue of one model version: default scheduler, dynamic batcher and the
iterative sequence batcher share it. Instance worker threads pull batches from it.

Dynamic batching follows Triton: preferred_batch_size, max_queue_delay_microseconds,
priority levels with per-level queue policies (max_queue_size, timeouts with REJECT or
DELAY, allow_timeout_override); requests are only batched with same-shaped requests
unless their inputs allow ragged batches.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

from tritonclient.grpc import model_config_pb2 as mc

from llmserve.core.errors import Cancelled, InvalidArgument, Unavailable
from llmserve.scheduling.request import SchedRequest, now_ns


@dataclass(slots=True)
class QueuePolicy:
    max_queue_size: int = 0  # 0: unbounded
    timeout_ns: int = 0
    reject_on_timeout: bool = True
    allow_timeout_override: bool = False

    @classmethod
    def from_config(cls, p: mc.ModelQueuePolicy) -> QueuePolicy:
        return cls(
            max_queue_size=int(p.max_queue_size),
            timeout_ns=int(p.default_timeout_microseconds) * 1000,
            reject_on_timeout=p.timeout_action != mc.ModelQueuePolicy.DELAY,
            allow_timeout_override=bool(p.allow_timeout_override),
        )


class RequestQueue:
    """Priority queues plus the batching rule; thread-safe."""

    def __init__(self, config: mc.ModelConfig):
        self.model_name = config.name
        self.max_batch_size = int(config.max_batch_size)
        self.dynamic = config.HasField("dynamic_batching") and self.max_batch_size > 0
        self.sequence = config.HasField("sequence_batching")
        self.iterative = self.sequence and config.sequence_batching.iterative_sequence
        # the sequence batcher batches too (Triton's "oldest" strategy without delay)
        self.batching = self.max_batch_size > 0 and (self.dynamic or self.sequence)
        self.preferred: list[int] = []
        self.max_delay_ns = 0
        self.levels = 1
        self.default_level = 1
        policies: dict[int, QueuePolicy] = {}
        default_policy = QueuePolicy()
        if config.HasField("dynamic_batching"):
            db = config.dynamic_batching
            self.preferred = sorted(int(x) for x in db.preferred_batch_size)
            self.max_delay_ns = int(db.max_queue_delay_microseconds) * 1000
            if db.HasField("default_queue_policy"):
                default_policy = QueuePolicy.from_config(db.default_queue_policy)
            if db.priority_levels > 0:
                self.levels = int(db.priority_levels)
                self.default_level = int(db.default_priority_level) or 1
            for level, p in db.priority_queue_policy.items():
                policies[int(level)] = QueuePolicy.from_config(p)
        self.policies = {lv: policies.get(lv, default_policy) for lv in range(1, self.levels + 1)}
        self.ragged = {i.name for i in config.input if i.allow_ragged_batch}
        self._main: dict[int, deque[SchedRequest]] = {lv: deque() for lv in self.policies}
        self._delayed: dict[int, deque[SchedRequest]] = {lv: deque() for lv in self.policies}
        self._cond = threading.Condition()
        self._stopped = False

    # -- submission -------------------------------------------------------------------
    def level_for(self, priority: int) -> int:
        if priority == 0 or self.levels == 1:
            return self.default_level if self.levels > 1 else 1
        if priority < 0 or priority > self.levels:
            raise InvalidArgument(
                f"invalid priority {priority} for model '{self.model_name}': it has "
                f"{self.levels} priority levels"
            )
        return priority

    def enqueue(self, sreq: SchedRequest) -> None:
        level = self.level_for(sreq.request.priority)
        policy = self.policies[level]
        sreq.priority_level = level
        sreq.timeout_ns = policy.timeout_ns
        if policy.allow_timeout_override and sreq.request.timeout_us > 0:
            sreq.timeout_ns = sreq.request.timeout_us * 1000
        sreq.timeout_reject = policy.reject_on_timeout
        sreq.enqueue_ns = now_ns()
        with self._cond:
            if self._stopped:
                raise Unavailable(f"model '{self.model_name}' is being unloaded")
            size = len(self._main[level]) + len(self._delayed[level])
            if policy.max_queue_size > 0 and size >= policy.max_queue_size:
                raise Unavailable("Exceeds maximum queue size")
            # before it can be taken: a request answered at once then drops this
            # callback with the rest (ModelVersion.submit), instead of gaining it after
            sreq.request.cancel.add_callback(lambda: self._cancel_queued(sreq))
            self._main[level].append(sreq)
            self._cond.notify()

    def requeue(self, sreq: SchedRequest) -> None:
        """A request released with RESCHEDULE: it goes to the front of its level."""
        sreq.reschedule_count += 1
        with self._cond:
            self._main[sreq.priority_level].appendleft(sreq)
            self._cond.notify()

    def _cancel_queued(self, sreq: SchedRequest) -> None:
        with self._cond:
            removed = False
            for q in (self._main[sreq.priority_level], self._delayed[sreq.priority_level]):
                if sreq in q:
                    q.remove(sreq)
                    removed = True
        if removed:
            sreq.fail(Cancelled("Request was cancelled"))

    # -- draining ---------------------------------------------------------------------
    def pending_count(self) -> int:
        with self._cond:
            return sum(len(q) for q in self._main.values()) + sum(len(q) for q in self._delayed.values())

    @property
    def stopped(self) -> bool:
        return self._stopped

    def stop(self) -> list[SchedRequest]:
        """No more batches; returns what was still queued (the caller fails them)."""
        with self._cond:
            self._stopped = True
            left = [r for q in list(self._main.values()) + list(self._delayed.values()) for r in q]
            for q in list(self._main.values()) + list(self._delayed.values()):
                q.clear()
            self._cond.notify_all()
        return left

    # -- batch formation --------------------------------------------------------------
    def _ordered(self) -> list[SchedRequest]:
        out: list[SchedRequest] = []
        for lv in sorted(self._main):
            out.extend(self._main[lv])
            out.extend(self._delayed[lv])
        return out

    def _reap(self, now: int) -> tuple[list[SchedRequest], int | None]:
        """Move or reject timed-out requests; returns rejected ones and the next deadline."""
        rejected: list[SchedRequest] = []
        next_deadline: int | None = None
        for lv, q in self._main.items():
            for r in list(q):
                if r.is_cancelled():
                    q.remove(r)
                    rejected.append(r)
                elif r.expired(now):
                    q.remove(r)
                    if r.timeout_reject:
                        rejected.append(r)
                    else:
                        r.delayed = True
                        self._delayed[lv].append(r)
                elif r.timeout_ns > 0:
                    deadline = r.enqueue_ns + r.timeout_ns
                    next_deadline = deadline if next_deadline is None else min(next_deadline, deadline)
        return rejected, next_deadline

    def _shape_key(self, r: SchedRequest) -> tuple:
        return tuple(
            (name, tuple(t.data.shape[1:]))
            for name, t in sorted(r.inputs.items())
            if name not in self.ragged
        )

    def _take(self, batch: list[SchedRequest]) -> list[SchedRequest]:
        for r in batch:
            q = self._delayed[r.priority_level] if r.delayed else self._main[r.priority_level]
            q.remove(r)
        return batch

    def next_batch(self) -> list[SchedRequest] | None:
        """Block until a batch is due; None once stopped."""
        while True:
            rejected: list[SchedRequest] = []
            with self._cond:
                if self._stopped:
                    return None
                now = now_ns()
                rejected, next_deadline = self._reap(now)
                if not rejected:
                    batch, wait_ns = self._form(now)
                    if batch:
                        return self._take(batch)
                    if next_deadline is not None:
                        until = next_deadline - now
                        wait_ns = until if wait_ns is None else min(wait_ns, until)
                    self._cond.wait(None if wait_ns is None else max(wait_ns, 0) / 1e9)
            for r in rejected:
                if r.is_cancelled():
                    r.fail(Cancelled("Request was cancelled"))
                else:
                    r.fail(Unavailable("Request timeout expired"))

    def _form(self, now: int) -> tuple[list[SchedRequest], int | None]:
        """The batch to send now, or ([], how long to wait)."""
        pending = self._ordered()
        if not pending:
            return [], None
        first = pending[0]
        if not self.batching:
            return [first], None
        key = self._shape_key(first)
        prefix: list[SchedRequest] = []
        sums: list[int] = []
        total = 0
        blocked = False
        for r in pending:
            if self._shape_key(r) != key or total + r.batch_size > self.max_batch_size:
                blocked = True
                break
            total += r.batch_size
            prefix.append(r)
            sums.append(total)
        best = -1
        for i, s in enumerate(sums):
            if s in self.preferred:
                best = i
        full = blocked or total >= self.max_batch_size or (
            bool(self.preferred) and total >= self.preferred[-1]
        )
        waited = now - min(r.enqueue_ns for r in prefix)
        if full or waited >= self.max_delay_ns or not self.dynamic:
            if best >= 0 and (full or not self.dynamic):
                return prefix[: best + 1], None
            return prefix, None
        return [], self.max_delay_ns - waited
