"""e2e: fails each request with the TritonError code named in CODE ("raise" raises)."""

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            code = pb_utils.get_input_tensor_by_name(request, "CODE").as_numpy()[0].decode()
            if code == "raise":
                raise RuntimeError("execute raised")
            error = pb_utils.TritonError(f"failed with {code}", getattr(pb_utils.TritonError, code))
            responses.append(pb_utils.InferenceResponse(error=error))
        return responses
