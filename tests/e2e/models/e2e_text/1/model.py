"""e2e: text_output = text_input repeated max_tokens times; echoes request parameters."""

import json

import numpy as np

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            text = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy()
            n = pb_utils.get_input_tensor_by_name(request, "max_tokens").as_numpy()
            params = json.loads(request.parameters() or "{}")
            suffix = params.get("suffix", "")
            out = np.array([[b" ".join([t[0]] * int(k[0])) + suffix.encode()]
                            for t, k in zip(text, n, strict=True)], dtype=np.object_)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("text_output", out),
                pb_utils.Tensor("tokens", n.astype(np.int32)),
            ]))
        return responses
