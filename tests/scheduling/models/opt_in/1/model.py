"""OUT = IN * 10, plus EXTRA when it was sent."""

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            out = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy() * 10
            extra = pb_utils.get_input_tensor_by_name(request, "EXTRA")
            if extra is not None:
                out = out + extra.as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", out)]))
        return responses
