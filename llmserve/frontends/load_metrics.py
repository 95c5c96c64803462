"""Triton's endpoint load report: a request with the header
`endpoint-load-metrics-format: json|text` gets an `endpoint-load-metrics` response header
(ORCA's named metrics) with the KV cache utilisation (used / max blocks) and the token
capacity (max blocks x tokens per block) of the LLM models, read from the same gauges as
/metrics, plus the number of requests waiting in their queues. Any other format value
adds no header and logs an error, as in Triton."""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)
REQUEST_HEADER = b"endpoint-load-metrics-format"
RESPONSE_HEADER = b"endpoint-load-metrics"


def load_report(registry: Any) -> dict[str, float] | None:
    """{kv_cache_utilization, max_token_capacity, queue_depth} summed over LLM models,
    or None when no LLM model reports KV cache gauges."""
    blocks: dict[tuple[str, str], dict[str, float]] = {}
    waiting = 0.0
    for family in registry.collect():
        if family.name == "nv_trt_llm_kv_cache_block_metrics":
            for s in family.samples:
                key = (s.labels.get("model", ""), s.labels.get("version", ""))
                blocks.setdefault(key, {})[s.labels.get("kv_cache_block_type", "")] = s.value
        elif family.name == "nv_trt_llm_request_metrics":
            waiting += sum(s.value for s in family.samples
                           if s.labels.get("request_type") == "waiting")
    models = [b for b in blocks.values() if {"used", "max", "tokens_per"} <= b.keys()]
    if not models:
        return None
    used = sum(b["used"] for b in models)
    most = sum(b["max"] for b in models)
    return {"kv_cache_utilization": used / most if most > 0 else 0.0,
            "max_token_capacity": sum(b["max"] * b["tokens_per"] for b in models),
            "queue_depth": waiting}


def header_value(kind: str, report: dict[str, float]) -> str | None:
    if kind == "json":
        named = {"kv_cache_utilization": report["kv_cache_utilization"],
                 "max_token_capacity": int(report["max_token_capacity"]),
                 "queue_depth": int(report["queue_depth"])}
        return "JSON " + json.dumps({"named_metrics": named}, separators=(",", ":"))
    if kind == "text":
        return ("TEXT named_metrics.kv_cache_utilization="
                f"{report['kv_cache_utilization']:.6f}, "
                f"named_metrics.max_token_capacity={int(report['max_token_capacity'])}, "
                f"named_metrics.queue_depth={int(report['queue_depth'])}")
    log.error("endpoint-load-metrics-format is set to an invalid type: %s", kind[:32])
    return None


class LoadMetricsMiddleware:
    def __init__(self, app: ASGIApp, registry: Any):
        self.app = app
        self.registry = registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = None
        if scope["type"] == "http":
            for key, value in scope.get("headers", []):
                if key == REQUEST_HEADER:
                    kind = value.decode("latin-1").strip().lower()
        if kind is None:
            await self.app(scope, receive, send)
            return

        async def send_with_report(message: Message) -> None:
            if message["type"] == "http.response.start":
                report = load_report(self.registry)
                value = header_value(kind, report) if report is not None else None
                if report is None:
                    log.error("endpoint-load-metrics-format is set but no model reports KV "
                              "cache metrics; no header written")
                if value is not None:
                    message = dict(message)
                    message["headers"] = [*message.get("headers", []),
                                          (RESPONSE_HEADER, value.encode())]
            await send(message)

        await self.app(scope, receive, send_with_report)
