"""tensorrtllm backend: a response that reaches the dispatcher before enqueue_request has
returned its id (as an engine process's first tokens can) is answered, not dropped."""

import threading
import time

import numpy as np
from model_set_helpers import RouterExecutor
from tritonclient.grpc import model_config_pb2 as mc

from llmserve.backends.tensorrtllm.backend import TensorRTLLMModel
from llmserve.core.types import InferenceRequest, Tensor
from llmserve.llm import FinishReason, Response, Result
from llmserve.scheduling.request import ResponseSink, SchedRequest


class EarlyExecutor(RouterExecutor):
    """Delivers the whole answer inside enqueue_request and returns the id only after the
    dispatcher has had ample time to see it."""

    def enqueue_request(self, request) -> int:
        self.router.register(1)
        self.router.deliver(Response(1, Result(True, [[5, 6]], [FinishReason.LENGTH],
                                               is_sequence_final=True)))
        time.sleep(0.3)
        return 1


def test_response_before_enqueue_returns_is_answered(tmp_path):
    config = mc.ModelConfig(name="t", backend="tensorrtllm", max_batch_size=0)
    config.parameters["gpt_model_path"].string_value = str(tmp_path)
    config.output.add(name="output_ids", data_type=mc.TYPE_INT32, dims=[-1, -1])
    model = TensorRTLLMModel(config, tmp_path)
    model.executor = EarlyExecutor()
    threading.Thread(target=model._dispatch_loop, daemon=True).start()
    got: list = []
    done = threading.Event()

    def deliver(response) -> None:
        got.append(response)
        done.set()

    inputs = {"input_ids": Tensor("input_ids", "INT32", np.array([1, 2, 3], np.int32)),
              "input_lengths": Tensor("input_lengths", "INT32", np.array([3], np.int32)),
              "request_output_len": Tensor("request_output_len", "INT32",
                                           np.array([2], np.int32))}
    sched = SchedRequest(InferenceRequest("t", inputs), inputs, 1, ["output_ids"],
                         ResponseSink(deliver))
    try:
        model.execute([sched])
        assert done.wait(10), "the response that came early was dropped"
        (response,) = got
        assert response.error is None and response.final
        assert response.output("output_ids").data.tolist() == [[5, 6]]
    finally:
        model.unload()
