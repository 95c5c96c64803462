"""What a stub process costs a Python model, measured through InferenceServer.infer (no
HTTP), in-process vs stub, alternating so that other load on a shared machine falls on
both alike:

  echo      one request at a time to an identity model (4 int32 in, 4 out): the added
            latency of a stub is its round trip (one exec message, one done message)
  echo_1m   the same with a 1 MiB FP32 input and output (shared memory both ways)
  stream    a decoupled model sending 256 responses per request from execute
  bls       a model whose execute makes one BLS call to echo (stub -> server -> stub)
  raw       the stub alone: an exec message to echo's stub and its done message, from a
            StubProcess with no server around it (the channel, both sides' decoding and
            the model's execute; no scheduler, no event loop)

    .venv/bin/python scripts/bench/python_stub_roundtrip.py [--rounds 3] [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import logging
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from llmserve.backends.python.stub_env import interpreter_for
from llmserve.backends.python.stub_process import StubProcess
from llmserve.backends.python.stub_settings import MIB, PythonBackendSettings
from llmserve.core.types import InferenceRequest, Tensor
from llmserve.options import ServerOptions
from llmserve.server import InferenceServer

CONFIG = """backend: "python"
max_batch_size: 0
input [ {{ name: "X" data_type: {dtype} dims: [ -1 ] }} ]
output [ {{ name: "Y" data_type: {dtype} dims: [ -1 ] }} ]
{extra}
"""
ECHO = """import triton_python_backend_utils as pb_utils
class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse(
            [pb_utils.Tensor("Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy())])
            for r in requests]
"""
STREAM = """import numpy as np
import triton_python_backend_utils as pb_utils
class TritonPythonModel:
    def execute(self, requests):
        for r in requests:
            sender = r.get_response_sender()
            x = pb_utils.get_input_tensor_by_name(r, "X").as_numpy()
            for i in range(256):
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x)]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
"""
BLS = """import triton_python_backend_utils as pb_utils
class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "X")
            resp = pb_utils.InferenceRequest("echo", [x], ["Y"]).exec()
            out.append(pb_utils.InferenceResponse(resp.output_tensors()))
        return out
"""
DECOUPLED = 'model_transaction_policy { decoupled: true }'


def write_repo(root: Path) -> Path:
    models = {"echo": (ECHO, "TYPE_INT32", ""), "echo_1m": (ECHO, "TYPE_FP32", ""),
              "stream": (STREAM, "TYPE_INT32", DECOUPLED), "bls": (BLS, "TYPE_INT32", "")}
    for name, (code, dtype, extra) in models.items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.py").write_text(code)
        (root / name / "config.pbtxt").write_text(CONFIG.format(dtype=dtype, extra=extra))
    return root


async def run(server: InferenceServer, model: str, data: np.ndarray, requests: int) -> dict:
    datatype = "FP32" if data.dtype == np.float32 else "INT32"
    latencies, responses = [], 0
    start = time.perf_counter()
    for _ in range(requests):
        t0 = time.perf_counter()
        request = InferenceRequest(model, {"X": Tensor("X", datatype, data)})
        async for _resp in server.infer(request):
            responses += 1
        latencies.append(time.perf_counter() - t0)
    wall = time.perf_counter() - start
    return {"us": statistics.median(latencies) * 1e6, "resp_s": responses / wall}


def measure(repo: Path, mode: str, requests: int) -> dict[str, dict]:
    loop = asyncio.new_event_loop()
    server = InferenceServer(ServerOptions(
        model_repositories=[repo], backend_config={"python": {"execution-mode": mode}}))
    loop.run_until_complete(server.start())
    small = np.arange(4, dtype=np.int32)
    cases = {"echo": small, "echo_1m": np.ones(1 << 18, np.float32), "stream": small,
             "bls": small}
    out = {}
    try:
        for model, data in cases.items():
            n = requests if model in ("echo", "bls") else max(requests // 20, 20)
            loop.run_until_complete(run(server, model, data, 20))  # warm-up
            out[model] = loop.run_until_complete(run(server, model, data, n))
    finally:
        loop.run_until_complete(server.stop())
        loop.close()
    return out


class _Done:
    """Just enough of a stub's handler to time exec -> done."""

    def __init__(self, link: Any):
        self.link = link
        self.init: concurrent.futures.Future = concurrent.futures.Future()
        self.done = threading.Event()

    def on_message(self, message: tuple) -> None:
        if message[0] == "init_done":
            self.init.set_result(message)
        elif message[0] == "done":
            self.done.set()
        else:
            self.link.handle_common(message)

    def on_exit(self, reason: str) -> None:
        return None

    def hang_deadline(self) -> float | None:
        return None

    def on_hang(self) -> None:
        return None


def raw_round_trip(repo: Path, requests: int) -> float:
    """Median µs from sending an exec message to echo's stub to its done message."""
    settings = PythonBackendSettings()
    process = StubProcess("echo_raw", interpreter_for(mc.ModelConfig(name="echo"), repo / "echo"),
                          settings)
    handler = _Done(process.link)
    process.start({"mode": "model", "model_file": str(repo / "echo" / "1" / "model.py"),
                   "model_name": "echo", "args": {}, "decoupled": False,
                   "rules": ["echo", "echo_raw", False, False], "log_level": logging.WARNING,
                   "shm_prefix": "bench_", "shm_default": MIB, "shm_growth": MIB}, handler)
    handler.init.result(60)
    data = np.arange(4, dtype=np.int32)
    latencies = []
    try:
        for i in range(requests + 50):
            wire = (i, "echo", [process.link.pack("X", "INT32", data)], ["Y"], "", 0, -1, 0, 0,
                    {}, False)
            handler.done.clear()
            start = time.perf_counter()
            process.link.send(("exec", i, [wire]))
            handler.done.wait()
            latencies.append(time.perf_counter() - start)
    finally:
        process.link.call("finalize", timeout=30)
        process.stop(10)
    return statistics.median(latencies[50:]) * 1e6


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=2000)
    args = p.parse_args()
    repo = write_repo(Path(tempfile.mkdtemp(prefix="stub-bench-")))
    rows: dict[tuple[str, str], list[dict]] = {}
    for rnd in range(args.rounds):
        for mode in ("in_process", "stub"):
            for model, r in measure(repo, mode, args.requests).items():
                rows.setdefault((model, mode), []).append(r)
                print(f"round {rnd} {mode:>10} {model:>8}: median {r['us']:8.1f} us/request, "
                      f"{r['resp_s']:9.0f} responses/s", flush=True)
        us = raw_round_trip(repo, args.requests)
        rows.setdefault(("raw", "stub"), []).append({"us": us, "resp_s": 1e6 / us})
        print(f"round {rnd}       stub      raw: median {us:8.1f} us/round trip", flush=True)
    print("\nmedian over rounds")
    for (model, mode), rs in sorted(rows.items()):
        print(f"{model:>8} {mode:>10}: {statistics.median(r['us'] for r in rs):8.1f} us/request, "
              f"{statistics.median(r['resp_s'] for r in rs):9.0f} responses/s")


if __name__ == "__main__":
    main()
