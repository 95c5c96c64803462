"""Answers which `shared_lib` it imported and which interpreter runs it: the module
exists only in the model's EXECUTION_ENV_PATH environment."""

import sys

import numpy as np
import shared_lib

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        answer = np.array([shared_lib.VERSION.encode(), sys.prefix.encode()], dtype=np.object_)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", answer)]) for _ in requests]
