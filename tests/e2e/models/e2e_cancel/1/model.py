"""e2e (decoupled): sends one response, then waits until cancelled and writes MARKER."""

import time
from pathlib import Path

import numpy as np

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            marker = Path(pb_utils.get_input_tensor_by_name(request, "MARKER").as_numpy()[0].decode())
            sender.send(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor("OUT", np.array([1], dtype=np.int32))]))
            deadline = time.monotonic() + 20
            while not sender.is_cancelled() and time.monotonic() < deadline:
                time.sleep(0.01)
            marker.write_text("cancelled" if sender.is_cancelled() else "timeout")
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
