"""e2e (decoupled): streams "<text> <i>" for i < max_tokens; text "fail" errors at i=1."""

import numpy as np

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            text = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy()[0]
            n = int(pb_utils.get_input_tensor_by_name(request, "max_tokens").as_numpy()[0])
            for i in range(n):
                if text == b"fail" and i == 1:
                    error = pb_utils.TritonError("stream failed at 1")
                    sender.send(pb_utils.InferenceResponse(error=error),
                                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                    break
                out = np.array([text + b" %d" % i], dtype=np.object_)
                sender.send(pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor("text_output", out)]))
            else:
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
