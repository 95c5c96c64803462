"""Sync execute with a decoupled BLS iterator over repeat: Y = the streamed values."""

import numpy as np

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            req = pb_utils.InferenceRequest("repeat", [pb_utils.Tensor("IN", x)], ["OUT"])
            got = [int(r.output_tensors()[0].as_numpy()[0])
                   for r in req.exec(decoupled=True) if r.output_tensors()]
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", np.array(got, np.int32))]))
        return responses
