"""Server CPU seconds per streamed token, A/B between two source trees (say, a branch
point and a branch), alternating A and B each round so that other load on a shared
machine falls on both alike.

Per round and tree: fills the demo model set with that tree's fill script (its
pre/postprocessing and BLS model.py files), starts that tree's `llmserve serve` (engine
process and Python stubs as the demo repository runs them), then per model and
concurrency streams chat completions (ignore_eos, OSL tokens each) with
scripts/bench_stream_load.py and reads the CPU time of the server and every process under
it (engine, stubs) from /proc: cpu_ms/token = those CPU seconds / completion tokens.

    .venv/bin/python scripts/bench/stream_cpu_ab.py --tree A=build/base --tree B=. \
        [--rounds 2] [--concurrency 8 32] [--requests 48] [--models ensemble tensorrt_llm_bls]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "bench"))
sys.path.insert(0, str(ROOT / "scripts"))
from bench_stream_load import arguments, run  # noqa: E402
from engine_process_ab import PORT, fill_repository, start_server  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tree", action="append", required=True, help="LABEL=PATH, twice or more")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--concurrency", type=int, nargs="+", default=[8, 32])
    p.add_argument("--requests", type=int, default=48)
    p.add_argument("--osl", type=int, default=64)
    p.add_argument("--isl", type=int, default=128)
    p.add_argument("--models", nargs="+", default=["ensemble", "tensorrt_llm_bls"])
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--checkpoint", type=Path, default=ROOT / "models" / "demo-llm")
    p.add_argument("--out", type=Path, default=ROOT / "build" / "bench_stream_cpu")
    args = p.parse_args()
    trees = dict(t.split("=", 1) for t in args.tree)
    args.out.mkdir(parents=True, exist_ok=True)
    repos = {label: fill_repository(args.checkpoint.resolve(), args.out / f"repo_{label}",
                                    args.max_batch_size, Path(path).resolve())
             for label, path in trees.items()}
    rows: dict[tuple[str, str, int], list[dict]] = {}
    for rnd in range(args.rounds):
        for label, path in trees.items():
            server = start_server(repos[label], True, args.out / f"{label}.log",
                                  root=Path(path).resolve())
            try:
                for model in args.models:
                    for conc in args.concurrency:
                        load = arguments().parse_args([
                            f"http://127.0.0.1:{PORT}", "--model", model, "--chat",
                            "--concurrency", str(conc), "--requests", str(args.requests),
                            "--isl", str(args.isl), "--osl", str(args.osl),
                            "--pid", str(server.pid)])
                        r = asyncio.run(run(load))
                        rows.setdefault((model, label, conc), []).append(r)
                        print(f"round {rnd} {label:>3} {model:>16} c={conc:<3} "
                              f"{r['tok_s']:6.1f} tok/s  cpu {r['cpu_s']:6.1f} s  "
                              f"{r['cpu_ms_token']:5.2f} ms/token  load {r['load']:.1f}  ("
                              + ", ".join(f"{k} {v:.2f}" for k, v
                                          in sorted(r["ms_token_by_role"].items())) + ")",
                              flush=True)
            finally:
                server.terminate()
                server.wait(60)
    print("\nmedian over rounds (cpu ms/token per round)")
    for (model, label, conc), rs in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][2],
                                                                          kv[0][1])):
        med = statistics.median(r["cpu_ms_token"] for r in rs)
        each = ", ".join(f"{r['cpu_ms_token']:.2f}" for r in rs)
        loads = ", ".join(f"{r['load']:.1f}" for r in rs)
        print(f"{model:>16} c={conc:<3} {label:>3} {med:5.2f} ms/token  "
              f"{statistics.median(r['tok_s'] for r in rs):6.1f} tok/s  ({each}; load {loads})")


if __name__ == "__main__":
    main()
