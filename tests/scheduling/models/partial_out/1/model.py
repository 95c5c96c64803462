"""Declares EXTRA but produces it only for negative X (like the stock preprocessing's
OUT_PROMPT_TABLE_EXTRA_IDS, made only on request)."""

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            outs = [pb_utils.Tensor("Y", x + 1)]
            if x[0] < 0:
                outs.append(pb_utils.Tensor("EXTRA", x * 100))
            responses.append(pb_utils.InferenceResponse(outs))
        return responses
