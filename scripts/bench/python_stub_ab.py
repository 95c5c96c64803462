"""Streamed output rate through the model set's Python models (preprocessing and
postprocessing in the ensemble; the BLS) with every Python model in-process (A) and in
stub processes (B), alternating A/B so that other load on a shared machine falls on both
alike. The tensorrt_llm executor runs as the demo repository runs it (engine process).

Per round and mode: starts `llmserve serve` on the demo model set with
`--backend-config python,execution-mode=MODE`, warms every instance of both models up
(MAX_BATCH_SIZE concurrent short requests each: the BLS has that many instances), then
per model (ensemble,
tensorrt_llm_bls) and concurrency REQUESTS streaming OpenAI completions (ignore_eos,
max_tokens OSL), and prints output tokens/s, mean time to first token and mean
inter-token latency, then stops the server.

    .venv/bin/python scripts/bench/python_stub_ab.py [--rounds 3] [--concurrency 1 16]
        [--requests 32] [--osl 64] [--max-batch-size 16] [--model models/demo-llm]
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "bench"))
from engine_process_ab import (  # noqa: E402
    fill_repository,
    load,
    load_arguments,
    print_medians,
    start_server,
)

MODES = ("in_process", "stub")
MODELS = ("ensemble", "tensorrt_llm_bls")


def main() -> None:
    p = load_arguments([1, 16], 32, "bench_python_stubs")
    p.add_argument("--max-batch-size", type=int, default=16)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    repo = fill_repository(args.model.resolve(), args.out / "repo", args.max_batch_size)
    rows: dict[tuple[str, str, int], list[dict]] = {}
    for rnd in range(args.rounds):
        for mode in MODES:
            server = start_server(repo, True, args.out / f"{mode}.log",
                                  ("--backend-config", f"python,execution-mode={mode}"))
            try:
                for model in MODELS:  # every instance (stub) serves before the measurement
                    n = max(args.warmup, args.max_batch_size)
                    asyncio.run(load(args.max_batch_size, n, 8, model))
                for model in MODELS:
                    for conc in args.concurrency:
                        r = asyncio.run(load(conc, max(args.requests, conc), args.osl, model))
                        rows.setdefault((model, mode, conc), []).append(r)
                        print(f"round {rnd} {mode:>10} {model:>16} c={conc:<3} "
                              f"{r['tok_s']:7.1f} tok/s  ttft {r['ttft_ms']:7.1f} ms  "
                              f"itl {r['itl_ms']:6.2f} ms", flush=True)
            finally:
                server.terminate()
                server.wait(60)
    print_medians([(f"{model:>16} {mode:>10} c={conc:<3}", rs) for (model, mode, conc), rs
                   in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1]))])

if __name__ == "__main__":
    main()
