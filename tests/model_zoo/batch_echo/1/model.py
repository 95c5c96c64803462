"""Echoes X; SEEN = number of requests in the executed batch, TOTAL = batch size; sleeps
per the 'sleep_ms' parameter; ORDER = execution counter."""

import json
import time

import numpy as np

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"]).get("parameters", {})
        self.sleep = float(params.get("sleep_ms", {}).get("string_value", "0")) / 1000
        self.executions = 0

    def execute(self, requests):
        self.executions += 1
        xs = [pb_utils.get_input_tensor_by_name(r, "X").as_numpy() for r in requests]
        total = sum(x.shape[0] for x in xs)
        time.sleep(self.sleep)
        out = []
        for x in xs:
            n = x.shape[0]
            out.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("Y", x),
                pb_utils.Tensor("SEEN", np.full((n, 1), len(requests), np.int32)),
                pb_utils.Tensor("TOTAL", np.full((n, 1), total, np.int32)),
                pb_utils.Tensor("ORDER", np.full((n, 1), self.executions, np.int32)),
            ]))
        return out
