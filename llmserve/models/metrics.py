"""Prometheus collectors for the nv_* per-model metrics and the
server-wide response cache gauges, read from live statistics at scrape time."""

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
]
# Triton reports these only for models that use the response cache.
_CACHE_COUNTERS: list[tuple[str, str, Callable[[dict], float]]] = [
    ("nv_cache_num_hits_per_model", "Number of cache hits per model",
     lambda s: s["inference_stats"]["cache_hit"]["count"]),
    ("nv_cache_num_misses_per_model", "Number of cache misses per model",
     lambda s: s["inference_stats"]["cache_miss"]["count"]),
    ("nv_cache_hit_duration_per_model", "Total cache hit duration per model, in microseconds",
     lambda s: s["inference_stats"]["cache_hit"]["ns"] // 1000),
    ("nv_cache_miss_duration_per_model",
     "Total cache miss (insert+lookup) duration per model, in microseconds",
     lambda s: s["inference_stats"]["cache_miss"]["ns"] // 1000),
]


class ModelMetricsCollector:
    """`versions()` yields (model name, version, stats json, pending request count, whether
    the version uses the response cache)."""

    def __init__(self, versions: Callable[[], Iterable[tuple[str, int, dict, int, bool]]]):
        self._versions = versions

    def collect(self) -> Iterable[Any]:
        rows = list(self._versions())
        cached = [row for row in rows if row[4]]
        for counters, selected in ((_COUNTERS, rows), (_CACHE_COUNTERS, cached)):
            for name, doc, read in counters:
                m = ExactCounter(name, doc)
                for model, version, stats, *_ in selected:
                    m.add_sample(name, {"model": model, "version": str(version)},
                                 float(read(stats)))
                yield m
        pending = Metric("nv_inference_pending_request_count",
                         "Instantaneous number of pending requests awaiting execution per-model.",
                         "gauge")
        for model, version, _, count, _ in rows:
            pending.add_sample("nv_inference_pending_request_count",
                               {"model": model, "version": str(version)}, float(count))
        yield pending


_CACHE_GAUGES = {
    "nv_cache_num_entries": "Number of responses stored in response cache",
    "nv_cache_num_lookups": "Number of cache lookups in response cache",
    "nv_cache_num_hits": "Number of cache hits in response cache",
    "nv_cache_num_misses": "Number of cache misses in response cache",
    "nv_cache_num_evictions": "Number of cache evictions in response cache",
    "nv_cache_util": "Cache utilization [0.0 - 1.0]",
    "nv_cache_lookup_duration": "Total cache lookup duration (hit and miss), in microseconds",
    "nv_cache_insertion_duration": "Total cache insertion duration, in microseconds",
}


class CacheMetricsCollector:
    """The server-wide response cache gauges of Triton's local cache, read at scrape time
    from `cache.snapshot()`."""

    def __init__(self, cache: Any):
        self._cache = cache

    def collect(self) -> Iterable[Any]:
        for name, value in self._cache.snapshot().items():
            m = Metric(name, _CACHE_GAUGES[name], "gauge")
            m.add_sample(name, {}, float(value))
            yield m
