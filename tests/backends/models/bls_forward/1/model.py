"""Forwards wait_cancel's decoupled BLS responses to its own client and never checks
is_cancelled() (as tensorrtllm_backend's BLS); counts how its BLS iterations end."""

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.ended = pb_utils.MetricFamily(
            "test_bls_forward_ended_total", "BLS iterations that ended",
            pb_utils.MetricFamily.COUNTER).Metric({"model": "bls_forward"})

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            child = pb_utils.InferenceRequest("wait_cancel", request.inputs(), ["Y"])
            for response in child.exec(decoupled=True):
                if response.output_tensors():
                    sender.send(response)
            self.ended.increment(1)
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
