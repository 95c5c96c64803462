"""Counts the reference cycles that requests leave in this model's process. MODE=start:
collect, then keep every unreachable object in gc.garbage from now on; MODE=bls: a
decoupled BLS call to repeat, walked to its end, then a streamed answer through this
model's own response sender; MODE=count: collect, answer how many objects of the
request-keeping kinds were left unreachable since start, stop keeping them."""

import collections
import gc

import numpy as np

import triton_python_backend_utils as pb_utils

KINDS = {"ResponseIterator", "RequestState", "StubResponseSender", "InferenceResponse",
         "InferenceRequest", "CancellationToken", "SchedRequest", "ResponseSink"}


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            mode = pb_utils.get_input_tensor_by_name(request, "MODE").as_numpy()[0].decode()
            sender = request.get_response_sender()
            count = 0
            if mode == "start":
                gc.collect()
                gc.garbage.clear()
                gc.set_debug(gc.DEBUG_SAVEALL)
            elif mode == "bls":
                call = pb_utils.InferenceRequest(
                    "repeat", [pb_utils.Tensor("IN", np.array([1, 2, 3], np.int32))], ["OUT"])
                count = sum(1 for r in call.exec(decoupled=True) if r.output_tensors())
            elif mode == "count":
                gc.collect()
                kinds = collections.Counter(type(o).__name__ for o in gc.garbage)
                count = sum(n for kind, n in kinds.items() if kind in KINDS)
                gc.set_debug(0)
                gc.garbage.clear()
            out = pb_utils.Tensor("COUNT", np.array([count], np.int64))
            sender.send(pb_utils.InferenceResponse([out]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
