"""Per model-version statistics in the shape of Triton's statistics extension."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += max(int(ns), 0)

    def to_json(self) -> dict:
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


_DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output",
              "cache_hit", "cache_miss")


class ModelStats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.last_inference_ms = 0
        self.inference_count = 0
        self.execution_count = 0
        self.durations = {name: Duration() for name in _DURATIONS}
        self.batches: dict[int, BatchStats] = {}

    def request_done(self, success: bool, duration_ns: int) -> None:
        with self.lock:
            self.durations["success" if success else "fail"].add(duration_ns)
            if success:
                self.last_inference_ms = int(time.time() * 1000)

    def cache_hit(self, lookup_ns: int) -> None:
        """A request answered from the response cache (its success and duration are
        recorded by request_done, as for any request)."""
        with self.lock:
            self.durations["cache_hit"].add(lookup_ns)

    def cache_miss(self, lookup_and_insert_ns: int) -> None:
        """A response inserted into the cache after a miss: Triton adds the lookup and
        insertion time to the request's duration too."""
        with self.lock:
            self.durations["cache_miss"].add(lookup_and_insert_ns)
            self.durations["success"].ns += max(int(lookup_and_insert_ns), 0)

    def queued(self, wait_ns: int) -> None:
        with self.lock:
            self.durations["queue"].add(wait_ns)

    def executed(self, batch_size: int, requests: int, input_ns: int, infer_ns: int,
                 output_ns: int) -> None:
        """One backend execution of `requests` requests totalling `batch_size` inferences."""
        with self.lock:
            self.execution_count += 1
            self.inference_count += batch_size
            self.last_inference_ms = int(time.time() * 1000)
            for name, ns in (("compute_input", input_ns), ("compute_infer", infer_ns),
                             ("compute_output", output_ns)):
                self.durations[name].add(ns, requests)
            b = self.batches.setdefault(batch_size, BatchStats())
            b.compute_input.add(input_ns)
            b.compute_infer.add(infer_ns)
            b.compute_output.add(output_ns)

    def to_json(self, name: str, version: int) -> dict:
        with self.lock:
            return {
                "name": name,
                "version": str(version),
                "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
                "inference_stats": {k: d.to_json() for k, d in self.durations.items()},
                "response_stats": {},
                "batch_stats": [
                    {
                        "batch_size": size,
                        "compute_input": b.compute_input.to_json(),
                        "compute_infer": b.compute_infer.to_json(),
                        "compute_output": b.compute_output.to_json(),
                    }
                    for size, b in sorted(self.batches.items())
                ],
                "memory_usage": [],
            }
