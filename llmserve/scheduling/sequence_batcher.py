"""The sequence batcher (Triton's SequenceBatchScheduler): every request of a sequence (one
correlation id, START ... END) goes to the same slot of the same model instance, one
request at a time; sequences beyond the slots wait in a backlog; a sequence idle longer
than max_sequence_idle_microseconds loses its slot. Each instance's worker forms batches
with the direct strategy (batch entry i is slot i, idle slots padded with not-ready
requests) or the oldest strategy (a dynamic batch of the oldest ready sequences).
"""

from __future__ import annotations

import heapq
import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from llmserve.core.errors import Cancelled, InternalError, InvalidArgument, ServerError, Unavailable
from llmserve.core.types import InferenceRequest, Tensor
from llmserve.scheduling.ordering import ResponseOrderer
from llmserve.scheduling.request import ResponseSink, SchedRequest, now_ns
from llmserve.scheduling.sequence_controls import SEQUENCE_END, SEQUENCE_START, SequenceControls
from llmserve.scheduling.sequence_state import SequenceStates, StateSpec, blank, load_state_specs

log = logging.getLogger(__name__)

_BACKLOG_RECHECK_NS = 50_000_000  # an idle sequence still in the backlog is looked at again
_EXPIRED = "timeout of the corresponding sequence has been expired"


@dataclass(eq=False)
class _Slot:
    instance: int
    index: int
    queue: deque = field(default_factory=deque)  # SchedRequest, or None: force-end marker
    states: SequenceStates | None = None
    inflight: bool = False  # oldest strategy: the sequence has a request out to the model


@dataclass(eq=False)
class _Backlog:
    requests: list[SchedRequest]
    expire_ns: int = 0  # 0: never (set by request timeouts, as in Triton)


class SequenceBatcher:
    """Thread-safe; ModelVersion's instance workers pull batches with next_batch(i)."""

    def __init__(self, config: mc.ModelConfig, instance_count: int):
        sb = config.sequence_batching
        self.config = config
        self.model_name = config.name
        self.max_batch_size = max(1, int(config.max_batch_size))
        self.oldest = sb.HasField("oldest")
        self.controls = SequenceControls(config)
        self.idle_ns = int(sb.max_sequence_idle_microseconds) * 1000 or 1_000_000_000
        per_instance = self.max_batch_size
        if self.oldest:
            if sb.oldest.max_candidate_sequences > 0:
                per_instance = int(sb.oldest.max_candidate_sequences)
            self.delay_ns = int(sb.oldest.max_queue_delay_microseconds) * 1000
            self.preferred = sorted(int(x) for x in sb.oldest.preferred_batch_size)
            self.min_utilization = 0.0
        else:
            self.delay_ns = int(sb.direct.max_queue_delay_microseconds) * 1000
            self.preferred = []
            self.min_utilization = float(sb.direct.minimum_slot_utilization)
        self.config_inputs = {i.name for i in config.input}
        self.ragged = {i.name for i in config.input if i.allow_ragged_batch}
        self.state_specs: list[StateSpec] = []
        n = max(1, instance_count)
        self._slots = [[_Slot(i, s) for s in range(per_instance)] for i in range(n)]
        # free slots, lowest slot index first, spread over instances (Triton's ready queue)
        self._free = [(s, i) for i in range(n) for s in range(per_instance)]
        heapq.heapify(self._free)
        self._seq_slot: dict[int | str, _Slot] = {}
        self._seq_backlog: dict[int | str, _Backlog] = {}
        self._backlogs: deque[_Backlog] = deque()
        self._last_seen: dict[int | str, int] = {}
        self._dispatched: dict[int, _Slot] = {}  # id(request) -> its slot, until final
        self._busy = [0] * n  # direct: requests of the instance's last batch not yet final
        self._ready: list[list[tuple[int, SchedRequest]]] = [[] for _ in range(n)]  # oldest
        preserve = self.oldest and sb.oldest.preserve_ordering
        self._orderers = [ResponseOrderer() for _ in range(n)] if preserve else None
        self._drops: list[tuple[SchedRequest, ServerError]] = []  # failed outside the lock
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._reaper_cv = threading.Condition(self._lock)
        self._reaper: threading.Thread | None = None
        self._stopped = False

    def load_initial_states(self, model_dir: Path) -> None:
        """Read the implicit states' initial values (at model load; raises on bad ones)."""
        self.state_specs = load_state_specs(self.config, model_dir)

    # -- submission -------------------------------------------------------------------
    def enqueue(self, sreq: SchedRequest) -> None:
        """Route a request to its sequence's slot or backlog; raises ServerError."""
        r = sreq.request
        name = self.model_name
        if sreq.batch_size > 1:
            raise InvalidArgument(f"inference request to model '{name}' must specify "
                                  "batch-size 1 due to requirements of sequence batcher")
        cid = r.correlation_id
        if cid in (0, "", None):
            raise InvalidArgument(f"inference request to model '{name}' must specify a "
                                  "non-zero or non-empty correlation ID")
        self.controls.check_correlation_id(cid)
        start, end = bool(r.flags & SEQUENCE_START), bool(r.flags & SEQUENCE_END)
        now = now_ns()
        sreq.enqueue_ns = now
        # registered before the request can run, so no completion is missed
        sreq.sink.add_final_callback(lambda _resp: self._finished(sreq))
        with self._lock:
            if self._stopped:
                raise Unavailable(f"model '{name}' is being unloaded")
            slot = self._seq_slot.get(cid)
            backlog = self._seq_backlog.get(cid)
            if not start and slot is None and backlog is None:
                raise InvalidArgument(
                    f"inference request for sequence {cid} to model '{name}' must specify the "
                    "START flag on the first request of the sequence")
            self._last_seen[cid] = now
            if start and (slot is not None or backlog is not None):
                log.warning("sequence %s for model '%s' has a conflict. The previous sequence "
                            "did not end before this sequence start. Previous sequence will "
                            "be terminated early.", cid, name)
            if slot is None and backlog is None and self._free:
                index, instance = heapq.heappop(self._free)
                slot = self._seq_slot[cid] = self._slots[instance][index]
            if slot is not None:
                if end:
                    del self._seq_slot[cid]
                slot.queue.append(sreq)
                self._work.notify_all()
            else:
                self._to_backlog(sreq, cid, backlog, end, now)
            if self._reaper is None:
                self._reaper = threading.Thread(target=self._reap_loop, daemon=True,
                                                name=f"sequence-reaper-{name}")
                self._reaper.start()
        r.cancel.add_callback(self._wake)

    def _to_backlog(self, sreq: SchedRequest, cid: int | str, backlog: _Backlog | None,
                    end: bool, now: int) -> None:
        if backlog is None:
            backlog = _Backlog([])
            self._backlogs.append(backlog)
            if not end:
                self._seq_backlog[cid] = backlog
        elif end:  # a later sequence with this id collects in a new backlog
            del self._seq_backlog[cid]
        backlog.requests.append(sreq)
        timeout_us = sreq.request.timeout_us
        if timeout_us > 0:
            deadline = now + timeout_us * 1000
            if backlog.expire_ns == 0 or deadline < backlog.expire_ns:
                backlog.expire_ns = deadline
                self._reaper_cv.notify_all()

    def requeue(self, sreq: SchedRequest) -> None:
        sreq.fail(InternalError(f"request of model '{self.model_name}' cannot be rescheduled: "
                                "that needs sequence_batching { iterative_sequence: true }"))

    def _wake(self) -> None:
        with self._lock:
            self._work.notify_all()

    def _finished(self, sreq: SchedRequest) -> None:
        """A dispatched request sent its final response: its slot may go on."""
        with self._lock:
            slot = self._dispatched.pop(id(sreq), None)
            if slot is None:
                return
            if self.oldest:
                slot.inflight = False
            else:
                self._busy[slot.instance] -= 1
            self._work.notify_all()

    # -- slots and backlog (under the lock) --------------------------------------------
    def _release(self, slot: _Slot) -> None:
        """The slot's sequence is over: give it the oldest backlog sequence, or free it.
        Requests still queued in it belong to a cancelled sequence and are cancelled."""
        for r in slot.queue:
            if r is not None:
                self._drops.append((r, Cancelled("Request was cancelled")))
        slot.queue.clear()
        slot.states = None
        while self._backlogs:
            backlog = self._backlogs.popleft()
            last = backlog.requests[-1].request
            cid = last.correlation_id
            cancelled = any(r.is_cancelled() for r in backlog.requests)
            if not last.flags & SEQUENCE_END:
                # later requests of this sequence now go straight to the slot
                if self._seq_backlog.get(cid) is backlog:
                    del self._seq_backlog[cid]
                if not cancelled:
                    self._seq_slot[cid] = slot
            if cancelled:
                self._drops.extend((r, Cancelled("Request was cancelled"))
                                   for r in backlog.requests)
                continue
            slot.queue.extend(backlog.requests)
            self._work.notify_all()
            return
        heapq.heappush(self._free, (slot.index, slot.instance))

    def _settle(self, slot: _Slot) -> None:
        """Release the slot of a sequence that timed out (marker) or was cancelled."""
        while slot.queue:
            front = slot.queue[0]
            if front is None:
                slot.queue.popleft()
                self._release(slot)
            elif front.is_cancelled():
                cid = front.request.correlation_id
                if self._seq_slot.get(cid) is slot:
                    del self._seq_slot[cid]
                    self._last_seen.pop(cid, None)
                self._release(slot)
            else:
                return

    def _states_for(self, slot: _Slot, sreq: SchedRequest) -> SequenceStates | None:
        if not self.state_specs:
            return None
        if sreq.request.flags & SEQUENCE_START or slot.states is None:
            return SequenceStates(self.state_specs)
        return slot.states

    def _dispatch(self, slot: _Slot, sreq: SchedRequest, states: SequenceStates | None) -> None:
        """Give a request its control and state inputs as it leaves its slot's queue."""
        r = sreq.request
        sreq.inputs.update(self.controls.tensors(r.flags, r.correlation_id))
        if states is not None:
            slot.states = states
            sreq.sequence_states = states
            sreq.inputs.update(states.inputs())
        self._dispatched[id(sreq)] = slot
        if r.flags & SEQUENCE_END:
            self._release(slot)

    def _shape_key(self, sreq: SchedRequest, states: SequenceStates | None) -> tuple:
        key = tuple((n, tuple(t.data.shape[1:])) for n, t in sorted(sreq.inputs.items())
                    if n in self.config_inputs and n not in self.ragged)
        return key + (states.shapes() if states is not None else ())

    def _null_like(self, rep: SchedRequest, states: SequenceStates | None) -> SchedRequest:
        """A not-ready padding request shaped like `rep` (Triton's null request)."""
        inputs = {n: Tensor(n, t.datatype, blank(t.datatype, t.shape))
                  for n, t in rep.inputs.items() if n in self.config_inputs}
        inputs.update(self.controls.tensors(0, 0, ready=False))
        null_states = states.null_like() if states is not None else None
        if null_states is not None:
            inputs.update(null_states.inputs())
        request = InferenceRequest(rep.request.model_name, inputs,
                                   model_version=rep.request.model_version)
        return SchedRequest(request, inputs, rep.batch_size, list(rep.output_names),
                            ResponseSink(lambda _resp: None), enqueue_ns=now_ns(),
                            model_version=rep.model_version, null_request=True,
                            sequence_states=None)

    # -- batch formation ----------------------------------------------------------------
    def next_batch(self, instance: int = 0) -> list[SchedRequest] | None:
        """Block until instance `instance` has a batch; None once stopped."""
        while True:
            with self._lock:
                if self._stopped:
                    return None
                if self.oldest:
                    batch, wait_s = self._next_oldest(instance)
                else:
                    batch, wait_s = self._next_direct(instance)
                drops, self._drops = self._drops, []
                if not batch and not drops:
                    self._work.wait(wait_s)
                    continue
            for sreq, error in drops:
                sreq.fail(error)
            if batch:
                return batch

    def _next_direct(self, instance: int) -> tuple[list[SchedRequest], float | None]:
        if self._busy[instance]:  # the slots' previous requests are still running
            return [], None
        slots = self._slots[instance]
        for slot in slots:
            self._settle(slot)
        active = [s for s in slots if s.queue]
        if not active:
            return [], None
        wait_s = self._direct_wait(active)
        if wait_s is not None:
            return [], wait_s
        rep = active[0].queue[0]
        rep_states = self._states_for(active[0], rep)
        key = self._shape_key(rep, rep_states)
        batch: list[SchedRequest] = []
        for slot in slots[: active[-1].index + 1]:
            front = slot.queue[0] if slot.queue else None
            states = self._states_for(slot, front) if front is not None else None
            if front is None or self._shape_key(front, states) != key:
                batch.append(self._null_like(rep, rep_states))
                continue
            slot.queue.popleft()
            self._dispatch(slot, front, states)
            batch.append(front)
        self._busy[instance] = sum(not r.null_request for r in batch)
        return batch, None

    def _direct_wait(self, active: list[_Slot]) -> float | None:
        """Seconds to wait for more ready slots (direct max_queue_delay_microseconds with
        minimum_slot_utilization), or None to run now."""
        if self.delay_ns == 0 or self.min_utilization == 0:
            return None
        waited = now_ns() - min(s.queue[0].enqueue_ns for s in active)
        if waited > self.delay_ns or len(active) / self.max_batch_size >= self.min_utilization:
            return None
        return (self.delay_ns - waited) / 1e9

    def _next_oldest(self, instance: int) -> tuple[list[SchedRequest], float | None]:
        ready = self._ready[instance]
        for slot in self._slots[instance]:
            if slot.inflight:
                continue
            self._settle(slot)
            if slot.queue:
                front = slot.queue.popleft()
                slot.inflight = True
                self._dispatch(slot, front, self._states_for(slot, front))
                if self._orderers is not None:
                    self._orderers[instance].register(front)
                ready.append((now_ns(), front))
        if not ready:
            return [], None
        first = ready[0][1]
        key = self._shape_key(first, first.sequence_states)
        count, blocked = 0, False
        for _, r in ready:
            if count >= self.max_batch_size or self._shape_key(r, r.sequence_states) != key:
                blocked = True
                break
            count += 1
        # as the dynamic batcher: a full batch or the largest preferred size goes at once
        full = blocked or count >= self.max_batch_size or (
            bool(self.preferred) and count >= self.preferred[-1])
        waited = now_ns() - ready[0][0]
        if not full and waited < self.delay_ns:
            return [], (self.delay_ns - waited) / 1e9
        fits = [p for p in self.preferred if p <= count]
        take = fits[-1] if full and fits else count
        batch = [r for _, r in ready[:take]]
        del ready[:take]
        return batch, None

    # -- idle sequences and backlog timeouts ----------------------------------------------
    def _reap_loop(self) -> None:
        while True:
            with self._lock:
                if self._stopped:
                    return
                expired, wait_s = self._reap(now_ns())
                if not expired:
                    self._reaper_cv.wait(wait_s)
                    continue
            for sreq in expired:
                sreq.fail(Unavailable(_EXPIRED))

    def _reap(self, now: int) -> tuple[list[SchedRequest], float]:
        wait_ns = self.idle_ns
        for cid, seen in list(self._last_seen.items()):
            remaining = self.idle_ns - (now - seen)
            if remaining > 0:
                wait_ns = min(wait_ns, remaining)
                continue
            slot = self._seq_slot.pop(cid, None)
            if slot is not None:
                del self._last_seen[cid]
                log.info("model '%s': sequence %s idle longer than max_sequence_idle_"
                         "microseconds; its slot is released", self.model_name, cid)
                slot.queue.append(None)  # the slot's worker releases it in turn
                self._work.notify_all()
            elif cid in self._seq_backlog:
                wait_ns = min(wait_ns, _BACKLOG_RECHECK_NS)
            else:
                del self._last_seen[cid]
        expired: list[SchedRequest] = []
        for backlog in list(self._backlogs):
            if backlog.expire_ns == 0:
                continue
            if backlog.expire_ns <= now:
                self._backlogs.remove(backlog)
                expired.extend(backlog.requests)
                cid = backlog.requests[0].request.correlation_id
                if self._seq_backlog.get(cid) is backlog:
                    del self._seq_backlog[cid]
            else:
                wait_ns = min(wait_ns, backlog.expire_ns - now)
        return expired, max(wait_ns, 0) / 1e9

    # -- draining -----------------------------------------------------------------------
    def pending_count(self) -> int:
        with self._lock:
            queued = sum(1 for slots in self._slots for s in slots for r in s.queue
                         if r is not None)
            return (queued + sum(len(b.requests) for b in self._backlogs)
                    + sum(len(ready) for ready in self._ready))

    @property
    def stopped(self) -> bool:
        return self._stopped

    def stop(self) -> list[SchedRequest]:
        """No more batches; returns what was still queued (the caller fails them)."""
        with self._lock:
            self._stopped = True
            left = [r for slots in self._slots for s in slots for r in s.queue if r is not None]
            for slots in self._slots:
                for s in slots:
                    s.queue.clear()
            left.extend(r for b in self._backlogs for r in b.requests)
            left.extend(r for ready in self._ready for _, r in ready)
            left.extend(r for r, _ in self._drops)
            self._backlogs.clear()
            self._seq_backlog.clear()
            self._seq_slot.clear()
            self._drops = []
            for ready in self._ready:
                ready.clear()
            self._work.notify_all()
            self._reaper_cv.notify_all()
        return left
