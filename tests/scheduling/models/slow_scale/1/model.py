import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """x * 10, taking longer for smaller x: with 4 instances, a stream 1, 2, 3, ...
    comes out of this step in reverse."""

    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "X").as_numpy()
            time.sleep(0.03 * max(0, 6 - int(x.reshape(-1)[0])))
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x * 10)]))
        return out
