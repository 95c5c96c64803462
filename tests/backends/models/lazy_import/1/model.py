# Imports its own modules only inside initialize and execute, as a model may in Triton
# (where its folder stays on sys.path): they must be found, and be this model's own.
import numpy as np

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        import helper

        self.who = helper.WHO

    def execute(self, requests):
        import helper
        from lib.tools import shout

        text = shout(self.who) + "|" + helper.WHO
        return [pb_utils.InferenceResponse([pb_utils.Tensor("Y", np.array([text.encode()], np.object_))])
                for _ in requests]
