"""Sleeps X ms and answers V = VERSION; finalize appends to the file named by the
'finalize_marker' parameter, if any."""

import json
import time

import numpy as np

import triton_python_backend_utils as pb_utils

VERSION = 1


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"]).get("parameters", {})
        self.marker = params.get("finalize_marker", {}).get("string_value")

    def execute(self, requests):
        out = []
        for r in requests:
            time.sleep(float(pb_utils.get_input_tensor_by_name(r, "X").as_numpy()[0]) / 1000)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("V", np.array([VERSION], np.int32))]))
        return out

    def finalize(self):
        if self.marker:
            with open(self.marker, "a") as f:
                f.write(f"finalized {VERSION}\n")
