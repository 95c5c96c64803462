"""A one-slot stateful model (max_batch_size 0): a single running sum, reset on START."""

import numpy as np

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.total = 0

    def execute(self, requests):
        responses = []
        for request in requests:
            start = pb_utils.get_input_tensor_by_name(request, "START").as_numpy()[0]
            value = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()[0]
            self.total = (0 if start == 1 else self.total) + int(value)
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor("OUTPUT", np.array([self.total], np.int32))]))
        return responses
