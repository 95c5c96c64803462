"""The Prometheus text exposition of the metrics port, as Triton prints it: counter
families keep their exact names (prometheus_client would rename them NAME_total)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric


class ExactCounter(Metric):
    """A counter family exposed under its own name with `# TYPE <name> counter`, the way
    Triton's prometheus-cpp registry prints nv_* counters and pb_utils custom counters."""

    def __init__(self, name: str, documentation: str):
        super().__init__(name, documentation, "counter")


class _One:
    def __init__(self, metric: Metric):
        self._metric = metric

    def collect(self) -> Iterable[Metric]:
        return [self._metric]


def render(registry: Any) -> bytes:
    """The text format of every family the registry collects."""
    parts: list[bytes] = []
    for metric in registry.collect():
        if not isinstance(metric, ExactCounter):
            parts.append(generate_latest(_One(metric)))
            continue
        # rendered untyped (no suffix), then typed back: the sample lines stay
        # prometheus_client's own formatting and escaping
        plain = Metric(metric.name, metric.documentation, "unknown")
        plain.samples = list(metric.samples)
        text = generate_latest(_One(plain)).decode("utf-8")
        typed = text.replace(f"# TYPE {metric.name} untyped\n", f"# TYPE {metric.name} counter\n", 1)
        parts.append(typed.encode("utf-8"))
    return b"".join(parts)
