"""Y = 2 * X; a request with X[0] < 0 makes execute fail the way the model's FAULT
parameter says: exit (os._exit(1)), segv (a real segmentation fault) or hang (sleeps
forever)."""

import ctypes
import json
import os
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.fault = json.loads(args["model_config"])["parameters"]["FAULT"]["string_value"]

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            if x.size and x[0] < 0:
                if self.fault == "exit":
                    os._exit(1)
                elif self.fault == "segv":
                    ctypes.string_at(0)
                else:
                    time.sleep(10**6)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x * 2)]))
        return responses
