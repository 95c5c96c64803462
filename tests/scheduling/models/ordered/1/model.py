"""Sleeps X ms, so later requests can finish first on other instances."""

import time

import numpy as np

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "X").as_numpy()
            time.sleep(float(x[0, 0]) / 1000)
            one = np.ones_like(x)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor(n, x if n == "Y" else one)
                                                   for n in ("Y", "SEEN", "TOTAL", "ORDER")]))
        return out
