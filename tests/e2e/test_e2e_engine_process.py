"""The inflight_batcher_llm set with tensorrt_llm's executor in an engine process
(parameter engine_process), over real sockets: the ensemble streams transformers' greedy
text and feeds the LLM metrics; a dropped stream frees its KV blocks; a killed engine
process fails its streams with a clear error, the model turns UNAVAILABLE with that
reason, a load brings it back, and an unload ends the process."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from e2e_live import LiveServer, e2e_options
from llm_e2e_helpers import sse_events
from llm_fixtures import make_tiny_checkpoint

from llmserve.llm.engine_process import EngineProcessExecutor

PROMPT = "The quick brown fox"
ENGINE_PARAMETER = 'parameters: { key: "engine_process" value: { string_value: "true" } }\n'


class Served:
    def __init__(self, base: Path):
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
        import fill_demo_repository as fill
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.ckpt = make_tiny_checkpoint(base / "ckpt", max_position_embeddings=1024)
        repo = fill.fill_repository(base / "repo", self.ckpt, max_batch_size=16)
        with open(repo / "tensorrt_llm" / "config.pbtxt", "a") as f:
            f.write(ENGINE_PARAMETER)
        self.live = LiveServer(e2e_options(model_repositories=[repo],
                                           model_control_mode="explicit",
                                           load_models=["ensemble"]))
        self.http = httpx.Client(base_url=f"http://{self.live.http_url}", timeout=60)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.ckpt))
        self.hf = AutoModelForCausalLM.from_pretrained(str(self.ckpt)).eval()

    def executor(self) -> EngineProcessExecutor:
        return self.live.server.models.resolve("tensorrt_llm")._backend_model.model.executor

    def greedy_text(self, n: int) -> str:
        ids = self.tokenizer.encode(PROMPT)
        out = self.hf.generate(__import__("torch").tensor([ids]), max_new_tokens=n,
                               do_sample=False, eos_token_id=self.tokenizer.eos_token_id,
                               pad_token_id=self.tokenizer.pad_token_id)
        return self.tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)

    def stream(self, max_tokens: int) -> list[dict]:
        r = self.http.post("/v2/models/ensemble/generate_stream",
                           json={"text_input": PROMPT, "max_tokens": max_tokens, "stream": True})
        assert r.status_code == 200, r.text
        return sse_events(r.text)

    def state(self, model: str) -> dict:
        rows = self.http.post("/v2/repository/index", json={}).json()
        return next(r for r in rows if r["name"] == model)

    def close(self) -> None:
        self.http.close()
        self.live.stop()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    s = Served(tmp_path_factory.mktemp("engine_process"))
    yield s
    s.close()


def gone(pid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def open_stream(served: Served, max_tokens: int) -> socket.socket:
    """A raw generate_stream whose reading and closing the test controls (no end id)."""
    body = json.dumps({"text_input": PROMPT, "max_tokens": max_tokens, "end_id": -1,
                       "stream": True}).encode()
    s = socket.create_connection(("127.0.0.1", served.live.frontends.http_port))
    s.sendall(b"POST /v2/models/ensemble/generate_stream HTTP/1.1\r\nHost: x\r\n"
              b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
              % (len(body), body))
    s.settimeout(30)
    return s


def read_until(s: socket.socket, done) -> bytes:
    data = b""
    while not done(data):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_ensemble_streams_through_the_engine_process(served):
    executor = served.executor()
    assert isinstance(executor, EngineProcessExecutor) and executor.pid != os.getpid()
    events = served.stream(12)
    assert len(events) > 1
    assert "".join(e["text_output"] for e in events) == served.greedy_text(12)
    deadline = time.monotonic() + 10  # the stats thread publishes every 100 ms
    pattern = re.compile(r'nv_trt_llm_general_metrics\{general_type="iteration_counter",'
                         r'model="tensorrt_llm",version="1"\} (\d+)')
    while time.monotonic() < deadline:
        found = pattern.search(httpx.get(served.live.metrics_url).text)
        if found and int(found.group(1)) > 0:
            break
        time.sleep(0.1)
    assert found and int(found.group(1)) > 0, "iteration stats never reached the metrics"


def test_concurrent_requests_all_answered(served):
    """Replies and first tokens race across the channel: none may be lost."""
    want = served.greedy_text(4)

    def one(_):
        r = served.http.post("/v2/models/ensemble/generate",
                             json={"text_input": PROMPT, "max_tokens": 4})
        return r.status_code, r.json().get("text_output")

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(32)))
    assert results == [(200, want)] * 32


def test_dropped_stream_frees_kv_blocks(served):
    executor = served.executor()
    total = executor.get_kv_cache_stats().free_num_blocks
    s = open_stream(served, 900)
    read_until(s, lambda d: d.count(b"data: ") >= 2)
    assert executor.get_kv_cache_stats().used_num_blocks > 0
    s.close()
    deadline = time.monotonic() + 15
    while executor.get_kv_cache_stats().used_num_blocks and time.monotonic() < deadline:
        time.sleep(0.02)
    stats = executor.get_kv_cache_stats()
    assert stats.used_num_blocks == 0 and stats.free_num_blocks == total


def test_killed_engine_fails_streams_goes_unavailable_and_reloads(served):
    pid = served.executor().pid
    s = open_stream(served, 900)
    read_until(s, lambda d: d.count(b"data: ") >= 2)
    os.kill(pid, signal.SIGKILL)
    body = read_until(s, lambda d: b'"error"' in d and d.endswith(b"\n\n")).decode()
    s.close()
    reason = "engine process for model 'tensorrt_llm' died (exit code -9, SIGKILL)"
    assert reason in body
    deadline = time.monotonic() + 10
    while served.state("tensorrt_llm")["state"] != "UNAVAILABLE":
        assert time.monotonic() < deadline, served.state("tensorrt_llm")
        time.sleep(0.05)
    assert reason in served.state("tensorrt_llm")["reason"]
    refused = served.http.post("/v2/models/ensemble/generate_stream",
                               json={"text_input": PROMPT, "max_tokens": 4})
    assert "error" in refused.text
    assert served.http.post("/v2/repository/models/tensorrt_llm/load").status_code == 200
    assert served.state("tensorrt_llm")["state"] == "READY"
    new_pid = served.executor().pid
    assert new_pid != pid and gone(pid)
    assert "".join(e["text_output"] for e in served.stream(8)) == served.greedy_text(8)
    # unloading the model ends its engine process (the module's last test: no reload)
    assert served.http.post("/v2/repository/models/tensorrt_llm/unload").status_code == 200
    assert gone(new_pid), "the engine process outlived its model's unload"
