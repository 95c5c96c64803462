"""Per-step cost of the engine process channel (llmserve/llm/engine_process): one engine
step's streamed responses (BATCH requests, one new token each) as one StepOutputs
message from an engine-side process to the server side over ipc://.

Prints, for batch 1 and 32: the engine side's CPU time per step (encode + send), the
server side's (receive + decode + hand each response to a ResponseRouter, as the
receiver thread does), and the one-way latency from the start of the encode to the last
response delivered (CLOCK_MONOTONIC is shared by both processes), with steps paced
every PACE_MS like a busy engine.

    .venv/bin/python scripts/bench/engine_channel.py [STEPS] [PACE_MS]
"""

from __future__ import annotations

import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from llmserve.llm.engine_process import messages as m  # noqa: E402
from llmserve.llm.engine_process.channel import server_sockets, worker_sockets  # noqa: E402
from llmserve.llm.request import FinishReason, Response, Result  # noqa: E402
from llmserve.llm.responses import ResponseRouter  # noqa: E402


def step(batch: int, i: int) -> m.StepOutputs:
    return m.StepOutputs([
        Response(rid, Result(False, [[(rid * 31 + i) % 32000]], [FinishReason.NOT_FINISHED],
                             decoding_iter=i))
        for rid in range(1, batch + 1)])


def engine_side(folder: str, batch: int, steps: int, pace_ms: float) -> None:
    """The child: sends `steps` paced steps, then its CPU time per step."""
    ctx = zmq.Context()
    push, pull = worker_sockets(ctx, Path(folder))
    pull.recv()  # the server is ready
    cpu = 0.0
    for i in range(steps):
        due = time.perf_counter() + pace_ms / 1000
        msg = step(batch, i)  # built by the engine before the send either way
        c0 = time.thread_time()
        t0 = time.perf_counter_ns()
        push.send_multipart([struct.pack("<q", t0), m.encode(msg)])
        cpu += time.thread_time() - c0
        while time.perf_counter() < due:
            pass
    push.send_multipart([b"", struct.pack("<d", cpu / steps)])
    ctx.destroy(linger=5000)


def server_side(batch: int, steps: int, pace_ms: float) -> dict[str, float]:
    folder = tempfile.mkdtemp(prefix="llmserve-bench-")
    ctx = zmq.Context()
    push, pull = server_sockets(ctx, Path(folder))
    child = subprocess.Popen([sys.executable, __file__, "--engine", folder, str(batch),
                              str(steps), str(pace_ms)])
    router = ResponseRouter()
    for rid in range(1, batch + 1):
        router.register(rid)
    time.sleep(0.5)
    push.send(b"go")  # PUSH waits until the engine side connected
    latencies, cpu = [], 0.0
    while True:
        head, frame = pull.recv_multipart()
        if not head:
            engine_cpu = struct.unpack("<d", frame)[0]
            break
        c0 = time.thread_time()
        for response in m.decode(frame).responses:
            router.deliver(response)
        cpu += time.thread_time() - c0
        latencies.append((time.perf_counter_ns() - struct.unpack("<q", head)[0]) / 1000)
        if len(latencies) % 64 == 0:
            router.await_responses(None, 0)  # drain, as the backend's dispatcher does
    child.wait()
    ctx.destroy(linger=0)
    shutil.rmtree(folder, ignore_errors=True)
    latencies.sort()
    return {"engine_cpu_us": engine_cpu * 1e6, "server_cpu_us": cpu / steps * 1e6,
            "latency_p50_us": statistics.median(latencies),
            "latency_p99_us": latencies[int(len(latencies) * 0.99) - 1]}


def main() -> None:
    if sys.argv[1:2] == ["--engine"]:
        folder, batch, steps, pace = sys.argv[2:6]
        engine_side(folder, int(batch), int(steps), float(pace))
        return
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    pace = float(sys.argv[2]) if len(sys.argv) > 2 else 2.0
    print(f"{steps} steps paced {pace} ms; microseconds per step")
    for batch in (1, 32):
        r = server_side(batch, steps, pace)
        print(f"batch {batch:>2}: engine side {r['engine_cpu_us']:.1f} cpu, server side "
              f"{r['server_cpu_us']:.1f} cpu, one-way latency p50 {r['latency_p50_us']:.0f} "
              f"p99 {r['latency_p99_us']:.0f}")


if __name__ == "__main__":
    main()
