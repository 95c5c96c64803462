"""Answers IN plus fresh random noise, a random TAG and a random response parameter, so
that a response served from the response cache is told apart from a new execution."""

import numpy as np

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.rng = np.random.default_rng()

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            noise = self.rng.standard_normal(x.shape).astype(np.float32)
            tag = np.array([[str(self.rng.random()).encode()] for _ in range(x.shape[0])],
                           dtype=np.object_)
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor("OUT", x + noise), pb_utils.Tensor("TAG", tag)],
                parameters={"nonce": str(self.rng.integers(1 << 62))}))
        return responses
