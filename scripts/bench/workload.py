"""Benchmark workloads and metrics: seeded mixed-length requests, Poisson arrivals,
latency/throughput summaries from raw per-token timestamps, and the memory-copy
bandwidth measurement behind the batch-1 decode bound."""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass(slots=True)
class BenchRequest:
    prompt: list[int]
    max_tokens: int
    arrival: float = 0.0  # seconds after the workload starts

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(slots=True)
class Timing:
    """What a system reports for one request: when it arrived and when each output
    token reached the client (seconds since the workload started)."""

    arrival: float
    times: list[float] = field(default_factory=list)
    tokens: int = 0


def make_requests(n: int, vocab_size: int, max_len: int, *, seed: int = 0,
                  prompt_range: tuple[int, int] = (16, 512),
                  output_range: tuple[int, int] = (16, 256)) -> list[BenchRequest]:
    """n requests with uniform random prompt and output lengths (fixed seed). A prompt
    is shortened when prompt + output would exceed max_len (the model's context)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        plen = rng.randint(*prompt_range)
        olen = rng.randint(*output_range)
        plen = max(1, min(plen, max_len - olen))
        # ids >= 8 skip the special tokens of the bundled tokenizers
        prompt = [rng.randrange(8, vocab_size) for _ in range(plen)]
        out.append(BenchRequest(prompt, olen))
    return out


def with_poisson_arrivals(requests: list[BenchRequest], rate: float,
                          seed: int = 1) -> list[BenchRequest]:
    """Copies of requests arriving as a Poisson process of rate requests/s."""
    rng = random.Random(seed)
    t = 0.0
    out = []
    for r in requests:
        out.append(BenchRequest(r.prompt, r.max_tokens, t))
        t += rng.expovariate(rate)
    return out


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summarize(timings: list[Timing], expected_tokens: int) -> dict:
    """Throughput and latency figures of one run. Output tokens/s counts tokens from the
    first arrival to the last token; TTFT = first token - arrival; inter-token latency
    pools every gap between consecutive tokens of a request (streaming runs only)."""
    total = sum(t.tokens for t in timings)
    start = min(t.arrival for t in timings)
    end = max(max(t.times) for t in timings if t.times)
    ttft = [t.times[0] - t.arrival for t in timings if t.times and len(t.times) == t.tokens]
    gaps: list[float] = []
    for t in timings:
        if len(t.times) == t.tokens:
            gaps.extend(b - a for a, b in zip(t.times, t.times[1:], strict=False))
    res = {
        "requests": len(timings),
        "output_tokens": total,
        "expected_tokens": expected_tokens,
        "duration_s": end - start,
        "output_tok_s": total / (end - start),
        "ttft_p50_s": _pct(ttft, 50), "ttft_p99_s": _pct(ttft, 99),
        "itl_p50_s": _pct(gaps, 50), "itl_p99_s": _pct(gaps, 99),
    }
    if total != expected_tokens:
        res["warning"] = f"generated {total} tokens, expected {expected_tokens}"
    return res


def decode_rate(timing: Timing) -> float:
    """Batch-1 decode tokens/s: tokens after the first over the time they took."""
    t = timing.times
    return (len(t) - 1) / (t[-1] - t[0])


def copy_bandwidth_gbs(nbytes: int = 512 * 2**20, repeats: int = 5) -> float:
    """Best-of-N torch copy of a large buffer, counted as STREAM does (bytes read +
    bytes written per second), in GB/s, using torch's configured threads."""
    import torch

    src = torch.ones(nbytes // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)  # fault the pages in
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best / 1e9


def load_average() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])
