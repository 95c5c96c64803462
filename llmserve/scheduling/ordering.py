"""preserve_ordering: responses leave in the order their requests arrived, even when
several instances finish batches out of order.
"""

from __future__ import annotations

import threading
from collections import deque

from llmserve.core.types import InferenceResponse
from llmserve.scheduling.request import SchedRequest


class _Slot:
    __slots__ = ("deliver", "buffered", "done")

    def __init__(self, deliver) -> None:
        self.deliver = deliver
        self.buffered: list[InferenceResponse] = []
        self.done = False


class ResponseOrderer:
    """Holds back a request's responses until every earlier request has finished."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: deque[_Slot] = deque()

    def register(self, sreq: SchedRequest):
        """Route sreq's responses through the orderer; returns a function that withdraws
        the slot (for a request that never got queued)."""
        slot = _Slot(sreq.sink._deliver)
        with self._lock:
            self._slots.append(slot)

        def deliver(resp: InferenceResponse) -> None:
            with self._lock:
                slot.buffered.append(resp)
                if resp.final:
                    slot.done = True
                # delivering under the lock keeps two flushing threads from reordering
                for fn, r in self._flush():
                    fn(r)

        def withdraw() -> None:
            with self._lock:
                slot.done = True
                for fn, r in self._flush():
                    fn(r)

        sreq.sink._deliver = deliver
        return withdraw

    def _flush(self) -> list:
        ready = []
        while self._slots:
            head = self._slots[0]
            ready.extend((head.deliver, r) for r in head.buffered)
            head.buffered = []
            if not head.done:
                break
            self._slots.popleft()
        return ready
