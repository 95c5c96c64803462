"""Per-step cost of tensor parallelism: the engine's forward (one step, as the executor
runs it) at tensor_parallel_size 1 and 2 on this machine, for decode steps of a batch
of sequences and for one prefill chunk; at tp 2 also the time rank 0 spends in its
all-reduces (waiting for the other rank included). CPU ranks over gloo on 127.0.0.1.
Besides wall time (median), the CPU time of all ranks together per decode step: on a
shared machine it moves less with the other jobs than wall time does.

    .venv/bin/python scripts/bench/tp_step_cost.py [MODEL] [--tp 1 2] [--batch 1 8]
        [--context 128] [--prefill 256] [--steps 40] [--threads N]

MODEL defaults to models/demo-llm. --threads: rank 0's torch threads (default torch's);
each worker rank takes max(1, threads // tp).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


class _Timed:
    """Wraps a process group's all_reduce to add up rank 0's time in it."""

    def __init__(self, group) -> None:
        self.group, self.seconds, self.calls = group, 0.0, 0

    def all_reduce(self, tensor: torch.Tensor) -> None:
        start = time.perf_counter()
        self.group.all_reduce(tensor)
        self.seconds += time.perf_counter() - start
        self.calls += 1


def _cpu_seconds(runner) -> float:
    """CPU time so far of this process and of the worker ranks' processes."""
    import psutil

    total = time.process_time()
    for worker in getattr(runner, "_workers", []):
        times = psutil.Process(worker.proc.pid).cpu_times()
        total += times.user + times.system
    return total


def _runner(model: str, tp: int):
    from llmserve.llm.engine import ModelRunner
    from llmserve.llm.engine.tp_runner import TensorParallelRunner

    if tp == 1:
        return ModelRunner(model, dtype="float32")
    return TensorParallelRunner(model, size=tp, dtype="float32")


def _measure(runner, tp: int, batch: int, context: int, prefill: int, steps: int) -> dict:
    from llmserve.llm.engine import SeqChunk

    block = 16
    per_seq = -(-(max(context + steps, prefill) + 1) // block)
    runner.allocate_kv_cache(per_seq * (batch + 1), block)
    tables = [list(range(i * per_seq, (i + 1) * per_seq)) for i in range(batch + 1)]
    gen = torch.Generator().manual_seed(0)
    vocab = runner.arch.vocab_size

    def ids(n: int) -> list[int]:
        return torch.randint(4, vocab, (n,), generator=gen).tolist()

    runner.forward([SeqChunk(ids(context), 0, tables[i]) for i in range(batch)])
    timed = None
    if tp > 1:
        model = runner.local.model
        timed = model.group = _Timed(model.group)
    decode = []
    cpu0 = _cpu_seconds(runner)
    for step in range(steps):
        chunks = [SeqChunk(ids(1), context + step, tables[i]) for i in range(batch)]
        start = time.perf_counter()
        runner.forward(chunks)
        decode.append(time.perf_counter() - start)
    cpu = (_cpu_seconds(runner) - cpu0) / steps
    reduce_decode = timed.seconds / steps if timed else 0.0
    calls = timed.calls // steps if timed else 0
    if timed:
        timed.seconds = 0.0
    pre = []
    for _ in range(5):
        start = time.perf_counter()
        runner.forward([SeqChunk(ids(prefill), 0, tables[batch])])
        pre.append(time.perf_counter() - start)
    if timed:
        runner.local.model.group = timed.group
    return {"decode_ms": statistics.median(decode[3:]) * 1e3, "cpu_ms": cpu * 1e3,
            "reduce_ms": reduce_decode * 1e3, "reduces": calls,
            "prefill_ms": statistics.median(pre[1:]) * 1e3,
            "reduce_prefill_ms": (timed.seconds / 5 * 1e3) if timed else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default=str(ROOT / "models" / "demo-llm"))
    parser.add_argument("--tp", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--prefill", type=int, default=256)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"model {args.model}, rank 0 threads {torch.get_num_threads()}, "
          f"context {args.context}, prefill {args.prefill} tokens")
    print("tp  batch  decode ms/step  CPU ms/step  (all-reduce ms, calls)  "
          "prefill ms  (all-reduce ms)")
    for tp in args.tp:
        runner = _runner(args.model, tp)
        for batch in args.batch:
            r = _measure(runner, tp, batch, args.context, args.prefill, args.steps)
            print(f"{tp:<3} {batch:<6} {r['decode_ms']:>14.2f} {r['cpu_ms']:>12.2f}  "
                  f"({r['reduce_ms']:.2f}, {r['reduces']}){'':>14} {r['prefill_ms']:>10.1f}  "
                  f"({r['reduce_prefill_ms']:.1f})")
        close = getattr(runner, "close", None)
        if close is not None:
            close()


if __name__ == "__main__":
    main()
