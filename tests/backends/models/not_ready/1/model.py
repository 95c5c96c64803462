"""A model whose own is_ready() says it is not ready (and that counts it)."""

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def is_ready(self):
        return False

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.get_input_tensor_by_name(r, "X")])
                for r in requests]
