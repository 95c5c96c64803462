"""Default mode: each request is rescheduled IN-1 times; RUNS counts its executions."""

import numpy as np

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.runs = {}

    def execute(self, requests):
        responses = []
        for request in requests:
            key = request.request_id()
            self.runs[key] = self.runs.get(key, 0) + 1
            want = int(pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()[0])
            if self.runs[key] < want:
                request.set_release_flags(pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)
                responses.append(None)
            else:
                responses.append(pb_utils.InferenceResponse(
                    [pb_utils.Tensor("RUNS", np.array([self.runs.pop(key)], np.int32))]))
        return responses
