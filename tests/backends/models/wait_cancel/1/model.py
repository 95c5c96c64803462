import asyncio

import numpy as np

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.seen_cancel = 0

    async def execute(self, requests):
        for request in requests:
            asyncio.get_running_loop().create_task(self._serve(request))
        return None

    async def _serve(self, request):
        sender = request.get_response_sender()
        sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("Y", np.array([1], np.int32))]))
        for _ in range(1000):
            if request.is_cancelled() and sender.is_cancelled():
                self.seen_cancel += 1
                pb_utils.MetricFamily("test_cancelled_total", "cancelled requests",
                                      pb_utils.MetricFamily.COUNTER).Metric({"model": "wait_cancel"}).increment(1)
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    "cancelled", pb_utils.TritonError.CANCELLED)),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                return
            await asyncio.sleep(0.01)
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
