"""Benchmark speculative decoding on the bundled target + draft pair (issue 7): greedy
tokens/s and acceptance rate of the target alone, draft-model speculation (a direct
executor pair, as the tensorrt_llm_bls draft path runs it), and n-gram prompt lookup.

    .venv/bin/python scripts/bench_speculative.py [--target DIR] [--draft DIR]
        [--requests 8] [--max-tokens 64] [--draft-tokens 4] [--device cpu]
        [--workload austen|repeat] [--json OUT]

Requests run one at a time (batch 1: where speculation pays off). Every mode must give
the target's greedy tokens; the script checks that and exits 1 if one does not.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmserve.llm import (  # noqa: E402
    Executor,
    ExecutorConfig,
    ExternalDraftTokensConfig,
    KvCacheConfig,
    ModelType,
    OutputConfig,
    Request,
    SpeculativeDecodingConfig,
)
from llmserve.llm.config import PromptLookupConfig, SpeculativeDecodingMode  # noqa: E402

log = logging.getLogger("bench_speculative")
TIMEOUT = datetime.timedelta(seconds=300)

PROMPTS = [
    "It was a fine morning, and",
    "Elizabeth could not help",
    '"My dear," said his lady to him one day,',
    "Mr. Darcy walked towards the window and",
    "The next morning Emma",
    "She was very glad to see her sister, and",
    "Marianne had never been so happy",
    "Sir John Middleton was a good-looking man",
    "Anne Elliot had been a very pretty girl",
    "Catherine was so much ashamed of",
    "Mrs. Jennings was a widow with an ample jointure.",
    "It is a truth universally acknowledged, that",
]


def repeat_prompt(text: str, times: int = 3) -> str:
    """A passage said several times: text the model is likely to copy (where prompt
    lookup pays off, as in editing or quoting workloads)."""
    return " ".join([text] * times)


def make_executor(path: Path, device: str, spec: SpeculativeDecodingConfig | None = None):
    cfg = ExecutorConfig(kv_cache_config=KvCacheConfig(max_tokens=8192, enable_block_reuse=True),
                         tokens_per_block=16, device=device, speculative_decoding_config=spec)
    return Executor(path, ModelType.DECODER_ONLY, cfg)


def _finals(ex: Executor, rid: int) -> list:
    out = []
    while not (out and out[-1].is_final):
        got = ex.await_responses(rid, TIMEOUT)
        if not got:
            raise TimeoutError(f"request {rid} produced no response in {TIMEOUT}")
        out += got
    for r in out:
        if r.has_error():
            raise RuntimeError(r.error_msg)
    return out


def generate(ex: Executor, prompt: list[int], n: int, end_id: int,
             drafts: list[int] | None = None) -> tuple[list[int], int, int]:
    """(generated tokens, drafted, accepted) of one greedy request."""
    oc = OutputConfig(exclude_input_from_output=True, return_perf_metrics=True)
    cfg = ExternalDraftTokensConfig(drafts) if drafts else None
    rid = ex.enqueue_request(Request(prompt, n, output_config=oc, end_id=end_id,
                                     external_draft_tokens_config=cfg))
    out = _finals(ex, rid)
    spec = out[-1].result.request_perf_metrics.speculative_decoding
    return out[-1].result.output_token_ids[0], spec.total_draft_tokens, spec.total_accepted_draft_tokens


def verify_step(ex: Executor, prompt: list[int], drafts: list[int], end_id: int,
                limit: int) -> tuple[list[int], bool]:
    """One target verification: a streaming request whose first response holds the
    accepted drafts plus the target's own next token; the rest is cancelled."""
    oc = OutputConfig(exclude_input_from_output=True)
    cfg = ExternalDraftTokensConfig(drafts) if drafts else None
    rid = ex.enqueue_request(Request(prompt, min(len(drafts) + 1, limit), streaming=True,
                                     output_config=oc, end_id=end_id,
                                     external_draft_tokens_config=cfg))
    first = ex.await_responses(rid, TIMEOUT)
    if not first:
        raise TimeoutError("target verification produced no response")
    if first[0].has_error():
        raise RuntimeError(first[0].error_msg)
    tokens = first[0].result.output_token_ids[0]
    done = first[-1].is_final
    if not done:
        ex.cancel_request(rid)
        _finals(ex, rid)
    finished = first[0].result.is_sequence_final and first[0].result.finish_reasons[0].name in (
        "END_ID", "STOP_WORDS")
    return tokens, finished


def draft_target(target: Executor, draft: Executor, prompt: list[int], n: int, k: int,
                 end_id: int) -> tuple[list[int], int, int]:
    """Draft-model speculation: the draft proposes k tokens, the target verifies them."""
    out: list[int] = []
    drafted = accepted = 0
    while len(out) < n:
        ctx = prompt + out
        room = n - len(out)
        kk = min(k, room - 1)
        proposal: list[int] = []
        if kk > 0:
            proposal, _, _ = generate(draft, ctx, kk, end_id)
        new, finished = verify_step(target, ctx, proposal, end_id, room)
        drafted += len(proposal)
        for a, b in zip(new, proposal, strict=False):  # the matching prefix was accepted
            if a != b:
                break
            accepted += 1
        out += new
        if finished or not new:
            break
    return out[:n], drafted, accepted


def run_mode(name: str, fn, prompts: list[list[int]]) -> dict:
    tokens, drafted, accepted = [], 0, 0
    start = time.perf_counter()
    for p in prompts:
        out, d, a = fn(p)
        tokens.append(out)
        drafted += d
        accepted += a
    wall = time.perf_counter() - start
    generated = sum(len(t) for t in tokens)
    result = {"mode": name, "tokens": generated, "seconds": round(wall, 3),
              "tokens_per_s": round(generated / wall, 1), "drafted": drafted,
              "accepted": accepted,
              "acceptance_rate": round(accepted / drafted, 3) if drafted else None}
    log.info("%s", result)
    return {**result, "outputs": tokens}


def machine(device: str) -> dict:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "device": device, "load_average": [round(x, 2) for x in os.getloadavg()]}
    if device.startswith("cuda"):
        import torch

        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", type=Path, default=ROOT / "models" / "demo-llm")
    p.add_argument("--draft", type=Path, default=ROOT / "models" / "demo-draft")
    p.add_argument("--requests", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--draft-tokens", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workload", choices=["austen", "repeat"], default="austen",
                   help="austen: novel openings; repeat: each opening said three times")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(args.target))
    end_id = tok.eos_token_id if tok.eos_token_id is not None else -1
    texts = [PROMPTS[i % len(PROMPTS)] for i in range(args.requests)]
    if args.workload == "repeat":
        texts = [repeat_prompt(t) for t in texts]
    prompts = [tok.encode(t) for t in texts]
    n, k = args.max_tokens, args.draft_tokens
    target = make_executor(args.target, args.device)
    draft = make_executor(args.draft, args.device)
    lookup = make_executor(args.target, args.device, SpeculativeDecodingConfig(
        mode=SpeculativeDecodingMode.PROMPT_LOOKUP,
        prompt_lookup=PromptLookupConfig(max_draft_tokens=k, max_matching_ngram_size=3,
                                         min_matching_ngram_size=1)))
    inside = make_executor(args.target, args.device, SpeculativeDecodingConfig(
        mode=SpeculativeDecodingMode.DRAFT_MODEL, draft_model_path=str(args.draft),
        num_draft_tokens=k))
    executors = (target, draft, lookup, inside)
    try:
        for ex in executors:  # warm-up
            generate(ex, prompts[0], 8, end_id)
        modes = [
            run_mode("target alone", lambda q: generate(target, q, n, end_id), prompts),
            run_mode(f"draft model, two executors as the BLS runs them (k={k})",
                     lambda q: draft_target(target, draft, q, n, k, end_id), prompts),
            run_mode(f"draft model inside the executor (k={k})",
                     lambda q: generate(inside, q, n, end_id), prompts),
            run_mode(f"n-gram prompt lookup (k={k})", lambda q: generate(lookup, q, n, end_id),
                     prompts),
        ]
    finally:
        for ex in executors:
            ex.shutdown()
    base = modes[0]
    ok = True
    for m in modes:
        m["identical_to_target"] = m["outputs"] == base["outputs"]
        m["speedup"] = round(m["tokens_per_s"] / base["tokens_per_s"], 2)
        ok &= m["identical_to_target"]
    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
              "machine": machine(args.device),
              "target": str(args.target), "draft": str(args.draft),
              "workload": args.workload, "requests": args.requests, "max_tokens": n,
              "draft_tokens": k,
              "modes": [{k2: v for k2, v in m.items() if k2 != "outputs"} for m in modes]}
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if not ok:
        log.error("a speculative mode changed the greedy output")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
