"""An oldest-strategy stateful model: the batch mixes sequences, so it keys its running
sums by the CORRID control tensor (a string id) and reports repeats within a batch."""

import numpy as np

import triton_python_backend_utils as pb_utils


def _value(request, name):
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)[0]


class TritonPythonModel:
    def initialize(self, args):
        self.sums = {}

    def execute(self, requests):
        ids = [_value(r, "CORRID") for r in requests]
        responses = []
        for request, corrid in zip(requests, ids, strict=True):
            if bool(_value(request, "START")):
                self.sums[corrid] = 0
            self.sums[corrid] = self.sums.get(corrid, 0) + int(_value(request, "INPUT"))
            total = self.sums[corrid]
            if bool(_value(request, "END")):
                del self.sums[corrid]
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUTPUT", np.array([[total]], np.int32)),
                pb_utils.Tensor("BATCH", np.array([[len(requests)]], np.int32)),
                pb_utils.Tensor("DUP", np.array([[ids.count(corrid) - 1]], np.int32)),
                pb_utils.Tensor("PYCORR", np.array([[str(request.correlation_id()).encode()]],
                                                   np.object_)),
            ]))
        return responses
