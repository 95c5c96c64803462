"""Benchmark guided decoding in the executor (issue 15).

(a) decode tok/s of a batch of 16 sequences with no guide, and with half of them under
    a JSON-schema guide: the median step latency while all 16 decode, and output tokens
    over wall time;
(b) time to first token of a request with a new (never compiled) 2 KB JSON schema while
    8 other streams decode, and those streams' inter-token latency before and while it
    compiles and starts (compilation runs off the engine thread).

    .venv/bin/python scripts/bench_guided.py [--model DIR] [--device cpu] [--repeats 5]
        [--max-tokens 128] [--json OUT]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmserve.llm import (  # noqa: E402
    Executor,
    ExecutorConfig,
    GuidedDecodingParams,
    KvCacheConfig,
    ModelType,
    OutputConfig,
    Request,
    SamplingConfig,
)

TIMEOUT = datetime.timedelta(seconds=600)
PROMPTS = ["It was a fine morning, and", "Elizabeth could not help",
           '"My dear," said his lady to him one day,', "Mr. Darcy walked towards the window and",
           "The next morning Emma", "She was very glad to see her sister, and",
           "Marianne had never been so happy", "Sir John Middleton was a good-looking man"]
STORY = {"type": "object", "properties": {
    "title": {"type": "string", "maxLength": 40},
    "story": {"type": "string", "maxLength": 2000}}, "required": ["title", "story"]}


def big_schema(tag: str, target_bytes: int = 2048) -> str:
    """A JSON schema of about target_bytes, new each time (tag in every name)."""
    props: dict = {}
    i = 0
    while len(json.dumps(props)) < target_bytes - 200:
        kind = i % 4
        props[f"{tag}_field_{i}"] = (
            {"type": "string", "maxLength": 16 + i, "description": f"text field {i}"} if kind == 0
            else {"type": "integer", "minimum": 0, "maximum": 1000 * (i + 1)} if kind == 1
            else {"enum": [f"{tag}_a{i}", f"{tag}_b{i}", f"{tag}_c{i}"]} if kind == 2
            else {"type": "array", "items": {"type": "number"}, "maxItems": 3 + i % 5})
        i += 1
    schema = {"type": "object", "properties": props, "required": list(props)[:4],
              "additionalProperties": False}
    return json.dumps(schema)


def make_executor(model: Path, device: str) -> Executor:
    cfg = ExecutorConfig(kv_cache_config=KvCacheConfig(max_tokens=16 * 512), tokens_per_block=16,
                         max_batch_size=32, device=device, iter_stats_max_iterations=100000)
    return Executor(model, ModelType.DECODER_ONLY, cfg)


def encode(model: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model))
    return tok, lambda text: tok.encode(text)


def _wait(ex: Executor, ids: list[int]) -> dict[int, list]:
    out: dict[int, list] = {i: [] for i in ids}
    pending = set(ids)
    while pending:
        for r in ex.await_responses(datetime.timedelta(seconds=5)):
            if r.has_error():
                raise RuntimeError(r.error_msg)
            out[r.request_id].append(r)
            if r.is_final:
                pending.discard(r.request_id)
    return out


# -- (a) decode tok/s ----------------------------------------------------------------------

class GuidedWork:
    """Time the sampler spends in the guided steps (masking and budget checks)."""

    def __init__(self) -> None:
        import llmserve.llm.sampling as sampling

        self.seconds, self.calls = 0.0, 0
        for name in ("apply_guides", "check_guided"):
            setattr(sampling, name, self._timed(getattr(sampling, name)))

    def _timed(self, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
                self.calls += fn.__name__ == "apply_guides"
        return wrapper

    def take(self) -> tuple[float, int]:
        out, self.seconds, self.calls = (self.seconds, self.calls), 0.0, 0
        return out


WORK: GuidedWork | None = None


def decode_batch(ex: Executor, enc, guided_half: bool, max_tokens: int) -> dict:
    reqs = []
    for i in range(16):
        guide = None
        if guided_half and i % 2:
            guide = GuidedDecodingParams(GuidedDecodingParams.GuideType.JSON_SCHEMA,
                                         json.dumps(STORY))
        reqs.append(Request(enc(PROMPTS[i % len(PROMPTS)]), max_tokens,
                            sampling_config=SamplingConfig(temperature=0.8, top_p=0.95, seed=i),
                            output_config=OutputConfig(exclude_input_from_output=True),
                            guided_decoding_params=guide))
    ex.get_latest_iteration_stats()
    WORK.take()
    t0 = time.perf_counter()
    got = _wait(ex, ex.enqueue_requests(reqs))
    wall = time.perf_counter() - t0
    guided_s, guided_steps = WORK.take()
    tokens = sum(len(t) for rs in got.values() for r in rs for t in r.result.output_token_ids)
    full = [s.iter_latency_ms for s in ex.get_latest_iteration_stats()
            if s.inflight_batching_stats.num_scheduled_requests == 16
            and s.inflight_batching_stats.num_context_requests == 0]
    step = statistics.median(full) if full else float("nan")
    texts = [got[i] for i in sorted(got)]
    return {"guided": guided_half, "full_batch_steps": len(full), "median_step_ms": step,
            "decode_tok_s_16": 16 / step * 1000 if full else None,
            "output_tokens": tokens, "wall_s": wall, "output_tok_s": tokens / wall,
            "guided_ms_per_step": guided_s / guided_steps * 1000 if guided_steps else 0.0,
            "guided_steps": guided_steps, "responses": len(texts)}


# -- (b) TTFT of a new schema next to 8 streams --------------------------------------------

def ttft_next_to_streams(ex: Executor, enc, tag: str) -> dict:
    arrivals: dict[int, list[float]] = {}
    finished: set[int] = set()
    lock = threading.Lock()

    def on_response(r) -> None:
        with lock:
            arrivals.setdefault(r.request_id, []).append(time.perf_counter())
            if r.is_final:
                finished.add(r.request_id)

    streams = [Request(enc(PROMPTS[i]), 400, streaming=True,
                       sampling_config=SamplingConfig(temperature=0.8, top_p=0.95, seed=i))
               for i in range(8)]
    ids = ex.enqueue_requests(streams)
    for rid in ids:
        ex.add_response_callback(rid, on_response)
    while min(len(arrivals.get(r, [])) for r in ids) < 30:
        time.sleep(0.005)
    schema = big_schema(tag)
    guided = Request(enc("Fill in the form:"), 8, streaming=True, output_config=OutputConfig(
        exclude_input_from_output=True), guided_decoding_params=GuidedDecodingParams(
        GuidedDecodingParams.GuideType.JSON_SCHEMA, schema))
    t_enq = time.perf_counter()
    gid = ex.enqueue_request(guided)
    first = ex.await_responses(gid, TIMEOUT)
    t_first = time.perf_counter()
    while not any(r.is_final for r in first):
        first += ex.await_responses(gid, TIMEOUT)
    time.sleep(0.3)
    for rid in ids:
        ex.cancel_request(rid)
    while len(finished) < len(ids):
        time.sleep(0.01)
    before, during = [], []
    for rid in ids:
        ts = arrivals[rid]
        for a, b in zip(ts, ts[1:], strict=False):
            if b < t_enq:
                before.append(b - a)
            elif a < t_first + 0.05:
                during.append(b - a)
    return {"schema_bytes": len(schema), "ttft_ms": (t_first - t_enq) * 1000,
            "itl_before_ms": _stats(before), "itl_during_ms": _stats(during)}


def _stats(gaps: list[float]) -> dict:
    if not gaps:
        return {}
    ms = sorted(g * 1000 for g in gaps)
    return {"n": len(ms), "median": statistics.median(ms),
            "p95": ms[min(len(ms) - 1, int(0.95 * len(ms)))], "max": ms[-1]}


def compile_only(ex: Executor, repeats: int) -> list[float]:
    """Wall time of compiling a new 2 KB schema by itself (what an inline compile would
    add to one engine step)."""
    out = []
    for i in range(repeats):
        params = GuidedDecodingParams(GuidedDecodingParams.GuideType.JSON_SCHEMA,
                                      big_schema(f"solo{i}_{os.getpid()}"))
        t0 = time.perf_counter()
        ex._guides.prepare(params).result()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "demo-llm")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    global WORK
    WORK = GuidedWork()
    tok, enc = encode(args.model)
    ex = make_executor(args.model, args.device)
    try:
        decode_batch(ex, enc, True, 16)  # warm-up: kernels, tokenizer view, the grammar
        runs = {"none": [], "half_json_schema": []}
        for _ in range(args.repeats):
            runs["none"].append(decode_batch(ex, enc, False, args.max_tokens))
            runs["half_json_schema"].append(decode_batch(ex, enc, True, args.max_tokens))
        ttft = [ttft_next_to_streams(ex, enc, f"r{i}_{os.getpid()}") for i in range(args.repeats)]
        solo = compile_only(ex, args.repeats)
    finally:
        ex.shutdown()
    report = {
        "model": str(args.model), "vocab": len(tok), "device": args.device,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_avg": os.getloadavg()},
        "decode": {k: {"median_step_ms": statistics.median(r["median_step_ms"] for r in v),
                       "guided_ms_per_step": statistics.median(r["guided_ms_per_step"] for r in v),
                       "decode_tok_s_16": statistics.median(r["decode_tok_s_16"] for r in v),
                       "output_tok_s": statistics.median(r["output_tok_s"] for r in v),
                       "runs": v} for k, v in runs.items()},
        "new_schema_ttft": ttft,
        "compile_alone_ms": solo,
    }
    d = report["decode"]
    print(f"decode, batch 16: no guide {d['none']['decode_tok_s_16']:.0f} tok/s "
          f"(step {d['none']['median_step_ms']:.2f} ms); half JSON-schema "
          f"{d['half_json_schema']['decode_tok_s_16']:.0f} tok/s "
          f"(step {d['half_json_schema']['median_step_ms']:.2f} ms, of which guided work "
          f"{d['half_json_schema']['guided_ms_per_step']:.2f} ms)")
    for t in ttft:
        print(f"new {t['schema_bytes']} B schema: TTFT {t['ttft_ms']:.1f} ms; 8 streams' ITL "
              f"before median {t['itl_before_ms'].get('median', 0):.1f} p95 "
              f"{t['itl_before_ms'].get('p95', 0):.1f} max {t['itl_before_ms'].get('max', 0):.1f}"
              f" / during median {t['itl_during_ms'].get('median', 0):.1f} p95 "
              f"{t['itl_during_ms'].get('p95', 0):.1f} max {t['itl_during_ms'].get('max', 0):.1f}")
    print("compile alone (ms):", ", ".join(f"{x:.1f}" for x in solo))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
