"""pb_utils.MetricFamily / Metric: custom metrics of Python models, exposed through the
server's Prometheus registry next to the nv_* metrics. (prometheus_client is imported
where the server exports them: a stub process does not need it.)"""

from __future__ import annotations

import math
import threading
from typing import Any

from llmserve.backends.python import context
from llmserve.backends.python.errors import TritonModelException

COUNTER, GAUGE, HISTOGRAM = 0, 1, 2
_KIND_NAMES = {COUNTER: "counter", GAUGE: "gauge", HISTOGRAM: "histogram"}


class CustomMetrics:
    """A prometheus_client collector holding every family Python models created."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.families: dict[str, MetricFamily] = {}

    def family(self, name: str, description: str, kind: int) -> MetricFamily | None:
        with self._lock:
            existing = self.families.get(name)
            if existing is not None and existing._kind != kind:
                raise TritonModelException(
                    f"metric family '{name}' already exists with a different kind"
                )
            return existing

    def add(self, family: MetricFamily) -> None:
        with self._lock:
            self.families.setdefault(family._name, family)

    def collect(self):
        with self._lock:
            families = list(self.families.values())
        for fam in families:
            yield fam._export()


class Metric:
    def __init__(self, family: MetricFamily, labels: dict[str, str], buckets: list[float] | None):
        self._family = family
        self._labels = labels
        self._lock = threading.Lock()
        self._value = 0.0
        if family._kind == HISTOGRAM:
            if not buckets:
                raise TritonModelException("histogram metrics need 'buckets'")
            self._buckets = sorted(float(b) for b in buckets)
            self._counts = [0] * (len(self._buckets) + 1)
            self._sum = 0.0
        elif buckets is not None:
            raise TritonModelException("only histogram metrics take 'buckets'")

    def increment(self, value: float) -> None:
        if self._family._kind == HISTOGRAM:
            raise TritonModelException("increment() is not supported for histogram metrics")
        if self._family._kind == COUNTER and value < 0:
            raise TritonModelException("counters can only be incremented by non-negative values")
        with self._lock:
            self._value += value

    def set(self, value: float) -> None:
        if self._family._kind != GAUGE:
            raise TritonModelException("set() is only supported for gauge metrics")
        with self._lock:
            self._value = float(value)

    def value(self) -> float:
        if self._family._kind == HISTOGRAM:
            raise TritonModelException("value() is not supported for histogram metrics")
        with self._lock:
            return self._value

    def observe(self, value: float) -> None:
        if self._family._kind != HISTOGRAM:
            raise TritonModelException("observe() is only supported for histogram metrics")
        with self._lock:
            self._sum += value
            for i, bound in enumerate(self._buckets):
                if value <= bound:
                    self._counts[i] += 1
                    break
            else:
                self._counts[-1] += 1

    def _samples(self, name: str) -> list[tuple[str, dict[str, str], float]]:
        with self._lock:
            if self._family._kind != HISTOGRAM:
                return [(name, dict(self._labels), self._value)]
            out = []
            cumulative = 0
            for bound, count in zip(self._buckets + [math.inf], self._counts, strict=False):
                cumulative += count
                le = "+Inf" if bound == math.inf else repr(bound)
                out.append((f"{name}_bucket", {**self._labels, "le": le}, float(cumulative)))
            out.append((f"{name}_count", dict(self._labels), float(cumulative)))
            out.append((f"{name}_sum", dict(self._labels), self._sum))
            return out


class MetricFamily:
    COUNTER = COUNTER
    GAUGE = GAUGE
    HISTOGRAM = HISTOGRAM
    _metric_class = Metric

    def __new__(cls, name: str, description: str, kind: int = COUNTER) -> MetricFamily:
        if kind not in _KIND_NAMES:
            raise TritonModelException(f"unknown metric kind {kind}")
        registry = context.server_or_raise("MetricFamily").custom_metrics
        existing = registry.family(name, description, kind)
        if existing is not None:
            return existing  # a reloaded model re-creates its families
        self = super().__new__(cls)
        self._name = name
        self._description = description
        self._kind = kind
        self._metrics: dict[tuple, Metric] = {}
        self._lock = threading.Lock()
        registry.add(self)
        return self

    def Metric(self, labels: dict[str, str] | None = None, buckets: list[float] | None = None) -> Metric:  # noqa: N802
        labels = {str(k): str(v) for k, v in (labels or {}).items()}
        key = tuple(sorted(labels.items()))
        with self._lock:
            metric = self._metrics.get(key)
            if metric is None:
                metric = self._metric_class(self, labels, buckets)
                self._metrics[key] = metric
            return metric

    def _export(self) -> Any:
        from prometheus_client.metrics_core import Metric as PromMetric

        from llmserve.core.prometheus_text import ExactCounter

        if self._kind == COUNTER:  # Triton keeps the family's exact name (no _total)
            prom = ExactCounter(self._name, self._description)
        else:
            prom = PromMetric(self._name, self._description, _KIND_NAMES[self._kind])
        with self._lock:
            metrics = list(self._metrics.values())
        for m in metrics:
            for sample_name, labels, value in m._samples(self._name):
                prom.add_sample(sample_name, labels, value)
        return prom
