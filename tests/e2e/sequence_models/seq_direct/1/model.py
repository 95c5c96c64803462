"""A direct-strategy stateful model: it keeps one running sum per batch slot, trusting
the sequence batcher to pin each sequence to a slot, and reports what it was given."""

import numpy as np

import triton_python_backend_utils as pb_utils


def _value(request, name):
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)[0]


def _out(name, value, dtype):
    return pb_utils.Tensor(name, np.array([[value]], dtype=dtype))


class TritonPythonModel:
    def initialize(self, args):
        self.sums = {}

    def execute(self, requests):
        ready = [bool(_value(r, "READY")) for r in requests]
        responses = []
        for slot, request in enumerate(requests):
            if ready[slot]:
                if int(_value(request, "START")) == 1:
                    self.sums[slot] = 0
                self.sums[slot] = self.sums.get(slot, 0) + int(_value(request, "INPUT"))
            corrid = request.correlation_id()
            responses.append(pb_utils.InferenceResponse([
                _out("OUTPUT", self.sums.get(slot, 0) if ready[slot] else 0, np.int32),
                _out("SLOT", slot, np.int32),
                _out("BATCH", len(requests), np.int32),
                _out("NREADY", sum(ready), np.int32),
                _out("ENDFLAG", _value(request, "END"), np.float32),
                _out("CORRID_OUT", _value(request, "CORRID"), np.uint64),
                _out("PYCORR", corrid if isinstance(corrid, int) else 0, np.uint64),
                _out("FLAGS", request.flags(), np.int32),
            ]))
        return responses
