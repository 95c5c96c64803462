"""End to end: the sequence batcher through tritonclient over real sockets. Python models
read the control tensors (START/END/READY/CORRID of int32, fp32, bool, uint64 and string
kinds); ONNX and TorchScript models keep implicit state; direct slots, oldest batching,
the backlog, idle and backlog timeouts, and Triton's documented errors."""

from __future__ import annotations

import queue
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as tg
import tritonclient.http as th
from e2e_live import LiveServer, e2e_options
from onnx_fixtures import state_accumulator, write_onnx
from tritonclient.utils import InferenceServerException

MODELS = Path(__file__).parent / "sequence_models"
IDLE_CONFIG = (MODELS / "seq_single" / "config.pbtxt").read_text().replace(
    "max_sequence_idle_microseconds: 30000000", "max_sequence_idle_microseconds: 300000")
ONNX_CONFIG = """
platform: "onnxruntime_onnx"
max_batch_size: 2
sequence_batching {
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },
    { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] } ] }
  ]
  state [ { input_name: "INPUT_STATE" output_name: "OUTPUT_STATE" data_type: TYPE_INT32
            dims: [ 1 ] } ]
}
input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""
TORCH_CONFIG = """
platform: "pytorch_libtorch"
max_batch_size: 2
sequence_batching {
  oldest { max_candidate_sequences: 2 }
  control_input [
    { name: "START__2" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] }
  ]
  state [ { input_name: "INPUT_STATE__1" output_name: "OUTPUT_STATE__1" data_type: TYPE_INT32
            dims: [ 1 ]
            initial_state { name: "hundred" data_type: TYPE_INT32 dims: [ 1 ]
                            data_file: "hundred.bin" } } ]
}
input [ { name: "INPUT__0" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUTPUT__0" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""


class StateSum(torch.nn.Module):
    """The new state is the old one plus the input (the state starts from initial_state)."""

    def forward(self, value: torch.Tensor, state: torch.Tensor, start: torch.Tensor):
        total = state + value
        return total, total


@pytest.fixture(scope="module")
def seq_live(tmp_path_factory):
    repo = tmp_path_factory.mktemp("sequence_repo")
    shutil.copytree(MODELS, repo, dirs_exist_ok=True)
    shutil.copytree(MODELS / "seq_single", repo / "seq_idle")
    (repo / "seq_idle" / "config.pbtxt").write_text(IDLE_CONFIG)
    write_onnx(repo, "onnx_state", state_accumulator(), ONNX_CONFIG)
    torch_dir = repo / "torch_state"
    (torch_dir / "1").mkdir(parents=True)
    torch.jit.save(torch.jit.script(StateSum()), str(torch_dir / "1" / "model.pt"))
    (torch_dir / "config.pbtxt").write_text(TORCH_CONFIG)
    (torch_dir / "initial_state").mkdir()
    (torch_dir / "initial_state" / "hundred.bin").write_bytes(np.int32(100).tobytes())
    server = LiveServer(e2e_options(model_repositories=[repo]))
    yield server
    server.stop()


def _inputs(mod, value: int, batched: bool = True, name: str = "INPUT") -> list:
    shape = [1, 1] if batched else [1]
    tensor = mod.InferInput(name, shape, "INT32")
    tensor.set_data_from_numpy(np.full(shape, value, np.int32))
    return [tensor]


def _scalar(result, name: str):
    return result.as_numpy(name).reshape(-1)[0]


def _in_thread(fn, *args, **kw) -> queue.Queue:
    """Run fn in a thread; its result (or exception) lands in the returned queue."""
    out: queue.Queue = queue.Queue()

    def run():
        try:
            out.put(fn(*args, **kw))
        except Exception as exc:  # noqa: BLE001 - handed to the test
            out.put(exc)

    threading.Thread(target=run, daemon=True).start()
    return out


def test_direct_strategy_pins_each_sequence_to_a_slot(seq_live):
    def step(seq, value, **flags):  # a client per call: calls run on several threads
        client = th.InferenceServerClient(seq_live.http_url)
        r = client.infer("seq_direct", _inputs(th, value), sequence_id=seq, **flags)
        return {n: _scalar(r, n) for n in ("OUTPUT", "SLOT", "BATCH", "NREADY", "ENDFLAG",
                                           "CORRID_OUT", "PYCORR", "FLAGS")}

    a = step(100, 1, sequence_start=True)
    assert (a["OUTPUT"], a["SLOT"], a["BATCH"], a["NREADY"], a["FLAGS"]) == (1, 0, 1, 1, 1)
    assert a["CORRID_OUT"] == 100 and a["PYCORR"] == 100 and a["ENDFLAG"] == 0.0
    b = step(200, 10, sequence_start=True)
    # slot 1 alone: slot 0 is padded with a not-ready request
    assert (b["OUTPUT"], b["SLOT"], b["BATCH"], b["NREADY"]) == (10, 1, 2, 1)
    a = step(100, 2)
    assert (a["OUTPUT"], a["SLOT"], a["BATCH"], a["FLAGS"]) == (3, 0, 1, 0)
    b = step(200, 20, sequence_end=True)
    assert (b["OUTPUT"], b["SLOT"], b["ENDFLAG"], b["FLAGS"]) == (30, 1, 1.0, 2)
    c = step(300, 5, sequence_start=True)  # the freed slot 1, its state reset by START
    assert (c["OUTPUT"], c["SLOT"], c["CORRID_OUT"]) == (5, 1, 300)
    # both slots ready: one batch of two (minimum_slot_utilization 1.0 waits for it)
    pending = [_in_thread(step, 100, 3, sequence_end=True), _in_thread(step, 300, 6)]
    a, c = (p.get(timeout=30) for p in pending)
    assert (a["OUTPUT"], a["SLOT"], a["NREADY"]) == (6, 0, 2)
    assert (c["OUTPUT"], c["SLOT"], c["NREADY"]) == (11, 1, 2)
    assert step(300, 1, sequence_end=True)["OUTPUT"] == 12


def test_oldest_strategy_batches_sequences_over_a_grpc_stream(seq_live):
    client = tg.InferenceServerClient(seq_live.grpc_url)
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        plan = [("alpha", 1), ("beta", 10), ("alpha", 2), ("beta", 20), ("alpha", 3),
                ("beta", 30)]
        for i, (seq, value) in enumerate(plan):
            client.async_stream_infer("seq_oldest", _inputs(tg, value), request_id=str(i),
                                      sequence_id=seq, sequence_start=i < 2,
                                      sequence_end=i >= 4)
        got = {}
        for _ in plan:
            result, error = results.get(timeout=30)
            assert error is None, error
            rid = int(result.get_response().id)
            got[rid] = {n: _scalar(result, n) for n in ("OUTPUT", "BATCH", "DUP", "PYCORR")}
    finally:
        client.stop_stream()
    assert [got[i]["OUTPUT"] for i in range(6)] == [1, 10, 3, 30, 6, 60]
    assert all(g["DUP"] == 0 for g in got.values())  # never two of one sequence in a batch
    assert all(g["BATCH"] == 2 for g in got.values())  # preferred size 2 across sequences
    assert [got[i]["PYCORR"] for i in range(2)] == [b"alpha", b"beta"]
    # a string id over HTTP too
    http = th.InferenceServerClient(seq_live.http_url)
    r = http.infer("seq_oldest", _inputs(th, 7), sequence_id="gamma", sequence_start=True,
                   sequence_end=True)
    assert _scalar(r, "OUTPUT") == 7 and _scalar(r, "PYCORR") == b"gamma"


def test_backlog_waits_for_a_free_slot(seq_live):
    def step(seq, value, **flags):  # a client per call: calls run on several threads
        client = th.InferenceServerClient(seq_live.http_url)
        r = client.infer("seq_single", _inputs(th, value, batched=False), sequence_id=seq,
                         **flags)
        return int(_scalar(r, "OUTPUT"))

    assert step(1, 5, sequence_start=True) == 5
    waiting = _in_thread(step, 2, 100, sequence_start=True)
    time.sleep(0.3)
    assert waiting.empty()  # the only slot belongs to sequence 1
    assert step(1, 6) == 11
    assert step(1, 7, sequence_end=True) == 18
    assert waiting.get(timeout=30) == 100  # out of the backlog into the freed slot
    assert step(2, 1, sequence_end=True) == 101


def test_backlog_request_timeout_expires_the_sequence(seq_live):
    client = th.InferenceServerClient(seq_live.http_url)
    single = _inputs(th, 1, batched=False)
    client.infer("seq_single", single, sequence_id=11, sequence_start=True)
    start = time.monotonic()
    with pytest.raises(InferenceServerException) as err:
        client.infer("seq_single", single, sequence_id=12, sequence_start=True, timeout=200_000)
    assert "timeout of the corresponding sequence has been expired" in str(err.value)
    assert err.value.status() == "503"
    assert time.monotonic() - start < 20
    with pytest.raises(InferenceServerException) as err:
        client.infer("seq_single", single, sequence_id=12)
    assert "must specify the START flag on the first request of the sequence" in str(err.value)
    client.infer("seq_single", single, sequence_id=11, sequence_end=True)


def test_idle_sequence_loses_its_slot(seq_live):
    client = tg.InferenceServerClient(seq_live.grpc_url)
    single = _inputs(tg, 4, batched=False)
    client.infer("seq_idle", single, sequence_id=21, sequence_start=True)
    time.sleep(1.0)  # max_sequence_idle_microseconds is 0.3 s
    with pytest.raises(InferenceServerException) as err:
        client.infer("seq_idle", single, sequence_id=21)
    assert "inference request for sequence 21 to model 'seq_idle' must specify the START " \
           "flag on the first request of the sequence" in err.value.message()
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    # the only slot was released: a new sequence runs at once
    r = client.infer("seq_idle", single, sequence_id=22, sequence_start=True, sequence_end=True)
    assert _scalar(r, "OUTPUT") == 4


def test_documented_errors(seq_live):
    http = th.InferenceServerClient(seq_live.http_url)
    grpc = tg.InferenceServerClient(seq_live.grpc_url)
    cases = [
        (dict(), "inference request to model 'seq_direct' must specify a non-zero or "
                 "non-empty correlation ID"),
        (dict(sequence_id=999), "inference request for sequence 999 to model 'seq_direct' "
                                "must specify the START flag on the first request of the "
                                "sequence"),
        (dict(sequence_id="text", sequence_start=True),
         "sequence batching control 'CORRID' data-type is 'BYTES', but model 'seq_direct' "
         "expects 'UINT64'"),
    ]
    for client, mod in ((http, th), (grpc, tg)):
        for kw, message in cases:
            with pytest.raises(InferenceServerException) as err:
                client.infer("seq_direct", _inputs(mod, 1), **kw)
            assert message in str(err.value)
        two = mod.InferInput("INPUT", [2, 1], "INT32")
        two.set_data_from_numpy(np.ones((2, 1), np.int32))
        with pytest.raises(InferenceServerException) as err:
            client.infer("seq_direct", [two], sequence_id=5, sequence_start=True)
        assert "must specify batch-size 1 due to requirements of sequence batcher" in str(
            err.value)
    with pytest.raises(InferenceServerException) as err:
        http.infer("seq_oldest", _inputs(th, 1), sequence_id="x" * 129, sequence_start=True)
    assert "string correlation ID cannot be longer than 128 characters" in str(err.value)
    # the control and state tensors are the batcher's, not the client's
    with pytest.raises(InferenceServerException) as err:
        http.infer("seq_direct", _inputs(th, 1) + _inputs(th, 1, name="START"),
                   sequence_id=6, sequence_start=True)
    assert "unexpected inference input 'START'" in str(err.value)


def test_onnx_implicit_state(seq_live):
    client = th.InferenceServerClient(seq_live.http_url)

    def step(seq, value, **flags):
        return int(_scalar(client.infer("onnx_state", _inputs(th, value), sequence_id=seq,
                                        **flags), "OUTPUT"))

    assert step(7, 1, sequence_start=True) == 1
    assert step(8, 5, sequence_start=True) == 5  # slot 1, beside a padding request
    assert step(7, 2) == 3
    assert step(8, 5) == 10
    assert step(7, 3, sequence_end=True) == 6
    assert step(9, 4, sequence_start=True) == 4  # slot 0 again, state fresh
    with pytest.raises(InferenceServerException) as err:  # state is not an output
        client.infer("onnx_state", _inputs(th, 1), sequence_id=8,
                     outputs=[th.InferRequestedOutput("OUTPUT_STATE")])
    assert "unexpected inference output 'OUTPUT_STATE'" in str(err.value)
    assert step(8, 1, sequence_end=True) == 11
    assert step(9, 1, sequence_end=True) == 5


def test_torchscript_implicit_state_from_initial_state_file(seq_live):
    client = tg.InferenceServerClient(seq_live.grpc_url)

    def step(seq, value, **flags):
        return int(_scalar(client.infer("torch_state", _inputs(tg, value, name="INPUT__0"),
                                        sequence_id=seq, **flags), "OUTPUT__0"))

    assert step(31, 1, sequence_start=True) == 101
    assert step(32, 10, sequence_start=True) == 110
    assert step(31, 2) == 103
    assert step(32, 10, sequence_end=True) == 120
    assert step(31, 3, sequence_end=True) == 106
    assert step(33, 1, sequence_start=True, sequence_end=True) == 101


def test_cancelled_backlog_sequence_is_dropped(seq_live):
    """A client that goes away while its sequence waits in the backlog: the sequence is
    cancelled when a slot frees up, and the slot goes to the next sequence."""
    from llmserve.core.errors import ErrorCode
    from llmserve.core.types import InferenceRequest, Tensor

    client = th.InferenceServerClient(seq_live.http_url)
    single = _inputs(th, 2, batched=False)
    client.infer("seq_single", single, sequence_id=41, sequence_start=True)
    waiting = InferenceRequest("seq_single", {"INPUT": Tensor("INPUT", "INT32",
                                                              np.array([9], np.int32))},
                               correlation_id=42, flags=1)

    async def first_response():
        responses = seq_live.server.infer(waiting)
        try:
            return await responses.__anext__()
        finally:
            await responses.aclose()

    backlogged = _in_thread(seq_live.call, first_response())
    time.sleep(0.2)
    waiting.cancel.cancel()
    client.infer("seq_single", single, sequence_id=41, sequence_end=True)
    resp = backlogged.get(timeout=30)
    assert resp.error is not None and resp.error.code == ErrorCode.CANCELLED
    with pytest.raises(InferenceServerException) as err:
        client.infer("seq_single", single, sequence_id=42)
    assert "must specify the START flag" in str(err.value)
    r = client.infer("seq_single", single, sequence_id=43, sequence_start=True,
                     sequence_end=True)
    assert _scalar(r, "OUTPUT") == 2
