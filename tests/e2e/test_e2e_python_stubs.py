"""Python models in stub processes, over real sockets with tritonclient: models that call
os._exit(1), segfault, or hang in execute, served beside add_sub and the LLM model set.
The faulty request fails with Triton's "Stub process ... is not healthy." and the reason,
add_sub and the ensemble keep answering correctly throughout, the model reports
UNAVAILABLE and comes back after a load (a hung one is killed after stub-timeout-seconds
and reloads by itself), and no stub outlives its model."""

from __future__ import annotations

import os
import queue
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from e2e_live import LiveServer, e2e_options
from llm_e2e_helpers import grpc_text_inputs
from llm_fixtures import make_tiny_checkpoint
from tritonclient.utils import InferenceServerException

ROOT = Path(__file__).resolve().parents[2]
FAULTY = Path(__file__).parent / "stub_models" / "faulty"
FAULTS = {"exit": "exit code 1", "segv": "killed by SIGSEGV",
          "hang": "killed after its execute made no progress for 3 s (stub-timeout-seconds)"}

sys.path.insert(0, str(ROOT / "scripts"))
import fill_demo_repository as fill  # noqa: E402


def gone(pid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


class Traffic:
    """add_sub (HTTP) and ensemble streams (gRPC) in a loop on a thread, each answer
    checked: add_sub's sums, the ensemble's text against the text it gave before."""

    def __init__(self, live: LiveServer, expected_text: str):
        self.live, self.expected_text = live, expected_text
        self.errors: list[str] = []
        self.answers = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        http = th.InferenceServerClient(self.live.http_url)
        try:
            while not self._stop.is_set():
                self._add_sub(http)
                text = ensemble_text(self.live, 8)
                if text != self.expected_text:
                    self.errors.append(f"ensemble said {text!r}, not {self.expected_text!r}")
                self.answers += 1
        except Exception as exc:  # a failed request is the finding
            self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            http.close()

    def _add_sub(self, http: th.InferenceServerClient) -> None:
        a = np.random.rand(1, 4).astype(np.float32)
        b = np.random.rand(1, 4).astype(np.float32)
        inputs = [th.InferInput("INPUT0", [1, 4], "FP32"), th.InferInput("INPUT1", [1, 4], "FP32")]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(b)
        result = http.infer("add_sub", inputs)
        if not (np.allclose(result.as_numpy("OUTPUT0"), a + b)
                and np.allclose(result.as_numpy("OUTPUT1"), a - b)):
            self.errors.append("add_sub answered wrongly")


def ensemble_text(live: LiveServer, max_tokens: int) -> str:
    q: queue.Queue = queue.Queue()
    client = tg.InferenceServerClient(live.grpc_url)
    client.start_stream(callback=lambda result, error: q.put((result, error)))
    text = ""
    try:
        client.async_stream_infer("ensemble", grpc_text_inputs("The quick brown fox", max_tokens),
                                  enable_empty_final_response=True)
        while True:
            result, error = q.get(timeout=60)
            if error is not None:
                raise error
            out = result.as_numpy("text_output")
            if out is not None:
                text += "".join(x.decode() for x in out.reshape(-1))
            if result.get_response().parameters["triton_final_response"].bool_param:
                return text
    finally:
        client.stop_stream()
        client.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    base = tmp_path_factory.mktemp("stubs")
    ckpt = make_tiny_checkpoint(base / "ckpt", max_position_embeddings=1024)
    repo = fill.fill_repository(base / "repo", ckpt, max_batch_size=2)
    shutil.copytree(ROOT / "examples" / "python_models" / "add_sub", repo / "add_sub")
    for fault in FAULTS:
        shutil.copytree(FAULTY, repo / f"fault_{fault}")
        config = repo / f"fault_{fault}" / "config.pbtxt"
        config.write_text(config.read_text().replace("${fault}", fault))
    server = LiveServer(e2e_options(model_repositories=[repo], model_control_mode="explicit",
                                    load_models=["*"],
                                    backend_config={"python": {"stub-timeout-seconds": "3"}}))
    yield server
    server.stop()


def stub_pids(live: LiveServer, model: str) -> list[int]:
    return [inst.process.pid for inst in live.server.models.resolve(model)._instances]


def infer_x(client: tg.InferenceServerClient, model: str, x: list[int]) -> np.ndarray:
    tensor = tg.InferInput("X", [len(x)], "INT32")
    tensor.set_data_from_numpy(np.array(x, np.int32))
    return client.infer(model, [tensor], client_timeout=60).as_numpy("Y")


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_dying_stub_fails_its_request_only_and_the_model_comes_back(live, fault):
    model = f"fault_{fault}"
    client = tg.InferenceServerClient(live.grpc_url)
    expected = ensemble_text(live, 8)
    [pid] = stub_pids(live, model)
    with Traffic(live, expected) as traffic:
        np.testing.assert_array_equal(infer_x(client, model, [1, 2]), [2, 4])
        with pytest.raises(InferenceServerException) as info:
            infer_x(client, model, [-1])
        message = str(info.value)
        assert f"Stub process '{model}_0' is not healthy." in message, message
        assert FAULTS[fault] in message, message
        assert gone(pid), "the failed stub process is still there"
        if fault == "hang":  # killed, then the model reloads by itself
            deadline = time.monotonic() + 60
            while not (client.is_model_ready(model) and stub_pids(live, model) != [pid]):
                assert time.monotonic() < deadline, "the hung model was not reloaded"
                time.sleep(0.1)
        else:
            assert not client.is_model_ready(model)
            [row] = [r for r in client.get_model_repository_index(as_json=True)["models"]
                     if r["name"] == model]
            assert row["state"] == "UNAVAILABLE" and "is not healthy" in row["reason"], row
            client.load_model(model)
        assert client.is_model_ready(model)
        np.testing.assert_array_equal(infer_x(client, model, [3]), [6])
        time.sleep(0.5)  # traffic continues a little past the recovery
    client.close()
    assert not traffic.errors, traffic.errors
    assert traffic.answers >= 1


def test_unloading_a_model_ends_its_stub_processes(live):
    client = tg.InferenceServerClient(live.grpc_url)
    pids = stub_pids(live, "add_sub")
    assert len(pids) == 2  # add_sub has two instances, each a process of its own
    client.unload_model("add_sub")
    assert all(gone(pid) for pid in pids)
    client.load_model("add_sub")
    assert client.is_model_ready("add_sub")
    client.close()
