"""tensorrtllm backend, streaming: while the reader has not taken the previous response,
a stream's new tokens are held and leave as one response when it has (stream_coalescing,
the default); the final response carries whatever was held; with stream_coalescing
"false", or a reader that does not report its reads, every step is a response."""

from __future__ import annotations

import queue
import threading

import numpy as np
import pytest
from model_set_helpers import RouterExecutor
from tritonclient.grpc import model_config_pb2 as mc

from llmserve.backends.tensorrtllm.backend import TensorRTLLMModel
from llmserve.core.types import InferenceRequest, InferenceResponse, Tensor
from llmserve.llm import FinishReason, Response, Result
from llmserve.scheduling.request import ResponseSink, SchedRequest

RID = 1


class ScriptedExecutor(RouterExecutor):
    """The test delivers each step's Result itself."""

    def enqueue_request(self, request) -> int:
        self.router.register(RID)
        return RID

    def step(self, tokens: list[int], final: bool = False, log_probs=None) -> None:
        self.router.deliver(Response(RID, Result(
            final, [tokens], [FinishReason.LENGTH if final else FinishReason.NOT_FINISHED],
            cum_log_probs=[sum(log_probs)] if log_probs else None,
            log_probs=[log_probs] if log_probs else None, is_sequence_final=final)))


def _model(tmp_path, coalescing: str | None) -> tuple[TensorRTLLMModel, ScriptedExecutor]:
    config = mc.ModelConfig(name="t", backend="tensorrtllm", max_batch_size=0)
    config.model_transaction_policy.decoupled = True
    config.parameters["gpt_model_path"].string_value = str(tmp_path)
    if coalescing is not None:
        config.parameters["stream_coalescing"].string_value = coalescing
    config.output.add(name="output_ids", data_type=mc.TYPE_INT32, dims=[-1, -1])
    config.output.add(name="output_log_probs", data_type=mc.TYPE_FP32, dims=[-1, -1])
    config.output.add(name="num_output_tokens", data_type=mc.TYPE_INT32, dims=[1])
    model = TensorRTLLMModel(config, tmp_path)
    model.executor = executor = ScriptedExecutor()
    threading.Thread(target=model._dispatch_loop, daemon=True).start()
    return model, executor


def _request(got: queue.Queue, log_probs: bool = False) -> SchedRequest:
    def i32(name, value):
        return Tensor(name, "INT32", np.array(value, np.int32))

    inputs = {"input_ids": i32("input_ids", [1, 2, 3]), "input_lengths": i32("input_lengths", [3]),
              "request_output_len": i32("request_output_len", [16]),
              "streaming": Tensor("streaming", "BOOL", np.array([True])),
              "return_num_output_tokens": Tensor("return_num_output_tokens", "BOOL",
                                                 np.array([True]))}
    if log_probs:
        inputs["return_log_probs"] = Tensor("return_log_probs", "BOOL", np.array([True]))
    return SchedRequest(InferenceRequest("t", inputs), inputs, 1,
                        ["output_ids", "output_log_probs", "num_output_tokens"],
                        ResponseSink(got.put))


def _ids(response) -> list[int]:
    return response.output("output_ids").data.reshape(-1).tolist()


def _settle(got: queue.Queue, n: int) -> list:
    """n responses, then nothing more for a moment."""
    out = [got.get(timeout=10) for _ in range(n)]
    with pytest.raises(queue.Empty):
        got.get(timeout=0.3)
    return out


def test_tokens_held_while_the_reader_is_behind_leave_as_one_response(tmp_path):
    model, executor = _model(tmp_path, None)
    got: queue.Queue = queue.Queue()
    sched = _request(got, log_probs=True)
    sched.sink.track_reads()
    try:
        model.execute([sched])
        executor.step([10], log_probs=[-0.1])
        (first,) = _settle(got, 1)  # the reader has nothing yet: sent at once
        for tok in (11, 12, 13):  # the first is not read: these are held
            executor.step([tok], log_probs=[-0.2])
        _settle(got, 0)
        sched.sink.read()  # the reader takes the first: the held tokens leave as one
        (merged,) = _settle(got, 1)
        assert _ids(first) == [10] and _ids(merged) == [11, 12, 13]
        assert merged.output("output_log_probs").data.reshape(-1).tolist() == \
            pytest.approx([-0.2, -0.2, -0.2])
        assert merged.output("num_output_tokens").data.reshape(-1).tolist() == [4]
        assert not merged.final
        executor.step([14])  # still unread: held
        executor.step([15], final=True)  # the final leaves at once, with what was held
        (last,) = _settle(got, 1)
        assert last.final and _ids(last) == [14, 15]
        assert last.output("num_output_tokens").data.reshape(-1).tolist() == [6]
    finally:
        model.unload()


@pytest.mark.parametrize("coalescing, reads", [("false", True), (None, False)])
def test_every_step_is_a_response_without_coalescing_or_read_reports(tmp_path, coalescing,
                                                                     reads):
    model, executor = _model(tmp_path, coalescing)
    got: queue.Queue = queue.Queue()
    sched = _request(got)
    if reads:
        sched.sink.track_reads()
    try:
        model.execute([sched])
        for tok in (10, 11, 12):
            executor.step([tok])
        executor.step([13], final=True)
        responses = _settle(got, 4)
        assert [_ids(r) for r in responses] == [[10], [11], [12], [13]]
        assert [r.final for r in responses] == [False, False, False, True]
    finally:
        model.unload()


def test_sink_behind_and_read():
    sink = ResponseSink(lambda resp: None)
    calls = []
    assert not sink.behind(lambda: calls.append(1))  # reads not tracked: never behind
    sink.track_reads()
    assert not sink.behind(lambda: calls.append(1))  # nothing unread

    sink.send(InferenceResponse("m", 1, "", [], final=False))
    sink.send(InferenceResponse("m", 1, "", [], final=False))
    assert sink.behind(lambda: calls.append(1))
    sink.read()
    assert calls == []  # one still unread
    sink.read()
    assert calls == [1]  # drained: called once
    sink.read()
    assert calls == [1]
