"""Prometheus collector for the nv_* per-model metrics (SPEC.md section 4), read from
the live model statistics at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client.metrics_core import Metric

from llmserve.core.prometheus_text import ExactCounter

# name, help, type, how to read it from ModelStats.to_json()
_COUNTERS: list[tuple[str, str, Callable[[dict], float]]] = [
    ("nv_inference_request_success", "Number of successful inference requests, all batch sizes",
     lambda s: s["inference_stats"]["success"]["count"]),
    ("nv_inference_request_failure", "Number of failed inference requests, all batch sizes",
     lambda s: s["inference_stats"]["fail"]["count"]),
    ("nv_inference_count", "Number of inferences performed (batch size counted)",
     lambda s: s["inference_count"]),
    ("nv_inference_exec_count", "Number of model executions performed",
     lambda s: s["execution_count"]),
    ("nv_inference_request_duration_us", "Cumulative inference request duration in microseconds",
     lambda s: (s["inference_stats"]["success"]["ns"] + s["inference_stats"]["fail"]["ns"]) // 1000),
    ("nv_inference_queue_duration_us", "Cumulative inference queuing duration in microseconds",
     lambda s: s["inference_stats"]["queue"]["ns"] // 1000),
    ("nv_inference_compute_input_duration_us", "Cumulative compute input duration in microseconds",
     lambda s: s["inference_stats"]["compute_input"]["ns"] // 1000),
    ("nv_inference_compute_infer_duration_us", "Cumulative compute inference duration in microseconds",
     lambda s: s["inference_stats"]["compute_infer"]["ns"] // 1000),
    ("nv_inference_compute_output_duration_us", "Cumulative inference compute output duration in microseconds",
     lambda s: s["inference_stats"]["compute_output"]["ns"] // 1000),
    ("nv_cache_num_hits_per_model", "Number of cache hits per model",
     lambda s: s["inference_stats"]["cache_hit"]["count"]),
    ("nv_cache_num_misses_per_model", "Number of cache misses per model",
     lambda s: s["inference_stats"]["cache_miss"]["count"]),
]


class ModelMetricsCollector:
    """`versions()` yields (model name, version, stats json, pending request count)."""

    def __init__(self, versions: Callable[[], Iterable[tuple[str, int, dict, int]]]):
        self._versions = versions

    def collect(self) -> Iterable[Any]:
        rows = list(self._versions())
        for name, doc, read in _COUNTERS:
            m = ExactCounter(name, doc)
            for model, version, stats, _ in rows:
                m.add_sample(name, {"model": model, "version": str(version)}, float(read(stats)))
            yield m
        pending = Metric("nv_inference_pending_request_count",
                         "Instantaneous number of pending requests awaiting execution per-model.",
                         "gauge")
        for model, version, _, count in rows:
            pending.add_sample("nv_inference_pending_request_count",
                               {"model": model, "version": str(version)}, float(count))
        yield pending
