"""Regressions of the repository and lifecycle findings of issue 16: failed explicit loads
of names that are no model folder leave no index rows, client-given names cannot forge
log lines, an escaping symlink hides no other model from the index, the LLM gauges fall
to idle once the last requests are cancelled, and SIGTERM honours --exit-timeout-secs
with a Python execute that never returns."""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
from reliability_server import ROOT


def _rows(client: httpx.Client) -> list[dict]:
    return client.post("/v2/repository/index").json()


def test_failed_loads_leave_no_index_rows(llm):
    with llm.client() as c:
        before = _rows(c)
        names = [f"no_such_model_{i}" for i in range(30)] + ["..", "a.b.c", "x" * 300]
        for name in names:
            assert c.post(f"/v2/repository/models/{name}/load").status_code in (400, 404)
        # a load from files whose config is broken: not a model folder either
        files = {"config": "{not json", "file:1/model.py": base64.b64encode(b"").decode()}
        r = c.post("/v2/repository/models/from_files/load", json={"parameters": files})
        assert r.status_code == 400, r.text
        assert _rows(c) == before


def test_client_names_cannot_forge_log_lines(llm, caplog):
    with caplog.at_level(logging.INFO, logger="llmserve"), llm.client() as c:
        r = c.post("/v2/repository/models/ensemble%0d%0aX-Injected:%201/load")
        assert r.status_code == 400
        # a failure that is logged, with client text in its reason
        config = json.dumps({"backend": "python\r\nX-Injected: 1"})
        files = {"config": config, "file:1/model.py": base64.b64encode(b"").decode()}
        r = c.post("/v2/repository/models/injected/load", json={"parameters": files})
        assert r.status_code == 400, r.text
    messages = [rec.getMessage() for rec in caplog.records if rec.name.startswith("llmserve")]
    assert any("X-Injected" in m for m in messages), messages
    assert not any("\n" in m or "\r" in m for m in messages), messages


def test_escaping_symlink_hides_no_model_from_the_index(llm, tmp_path):
    outside = tmp_path / "outside_model"
    outside.mkdir()
    late = llm.repo / "late_model"
    (late / "1").mkdir(parents=True)
    (late / "config.pbtxt").write_text('backend: "python"\n')
    link = llm.repo / "escape"
    link.symlink_to(outside, target_is_directory=True)
    try:
        with llm.client() as c:
            names = {row["name"] for row in _rows(c)}
            assert {"late_model", "ensemble", "tensorrt_llm"} <= names, names
            assert "escape" not in names
            r = c.post("/v2/repository/models/escape/load")
            assert r.status_code == 400 and "outside" in r.json()["error"], r.text
    finally:
        link.unlink()
        for path in (late / "config.pbtxt", late / "1", late):
            path.unlink() if path.is_file() else path.rmdir()


def test_gauges_fall_to_idle_after_cancel(llm):
    """Streams cut after their first token: no further step runs, yet within 2 s the
    active-request and used-KV-block gauges read 0 (they are what autoscalers read)."""
    with llm.client() as c:
        for _ in range(3):
            body = {"text_input": "Once upon a time", "max_tokens": 200, "stream": True}
            with c.stream("POST", "/v2/models/ensemble/generate_stream", json=body) as r:
                next(r.iter_lines())
    elapsed, held = llm.wait_idle(within=2.0)
    assert not any(held.values()), held


HANG_MODEL = '''
import time

class TritonPythonModel:
    def execute(self, requests):
        time.sleep(120)  # a model that never answers in time
'''
HANG_CONFIG = '''backend: "python"
max_batch_size: 0
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 1 ] } ]
'''
EXIT_TIMEOUT = 2


class _Process:
    """`llmserve serve` as a child process; its stderr lines collected."""

    def __init__(self, args: list[str]):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "LLMSERVE_ENGINE_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "llmserve.cli", "serve", *args],
                                     stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_for(self, pattern: str, timeout: float = 120) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                found = re.search(pattern, line)
                if found:
                    return found
            assert self.proc.poll() is None, "".join(self.lines)
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} in:\n{''.join(self.lines)}")


def test_sigterm_honours_exit_timeout_and_logs_names_escaped(tmp_path):
    (tmp_path / "hang" / "1").mkdir(parents=True)
    (tmp_path / "hang" / "1" / "model.py").write_text(HANG_MODEL)
    (tmp_path / "hang" / "config.pbtxt").write_text(HANG_CONFIG)
    server = _Process(["--model-repository", str(tmp_path), "--model-control-mode", "explicit",
                       "--load-model", "hang", "--exit-timeout-secs", str(EXIT_TIMEOUT),
                       "--allow-grpc", "false", "--allow-metrics", "false",
                       "--http-address", "127.0.0.1", "--http-port", "0"])
    try:
        port = int(server.wait_for(r"HTTP \(KServe v2\) on 127\.0\.0\.1:(\d+)").group(1))
        server.wait_for("llmserve is serving")
        url = f"http://127.0.0.1:{port}"
        r = httpx.post(f"{url}/v2/repository/models/ensemble%0d%0aX-Injected:%201/load")
        assert r.status_code == 400
        answers: list = []
        body = json.dumps({"inputs": [{"name": "IN", "datatype": "FP32", "shape": [1],
                                       "data": [1.0]}]})
        client = threading.Thread(target=lambda: answers.append(_post(f"{url}/v2/models/hang/infer",
                                                                      body)))
        client.start()
        server.wait_for("hang")  # loaded; now let the request reach execute
        time.sleep(1.0)
        start = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(timeout=60)
        elapsed = time.monotonic() - start
        client.join(timeout=10)
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
    log = "".join(server.lines)
    print(f"\nSIGTERM with a hung execute, --exit-timeout-secs={EXIT_TIMEOUT}: "
          f"exited after {elapsed:.1f}s; in-flight client got {answers}")
    assert elapsed < EXIT_TIMEOUT + 8, log  # was 30 s more per worker thread
    assert answers and answers[0] in (503, "disconnected"), answers
    assert not re.search(r"^X-Injected", log, re.M), log


def _post(url: str, body: str) -> int | str:
    try:
        return httpx.post(url, content=body, timeout=60).status_code
    except httpx.HTTPError:
        return "disconnected"
