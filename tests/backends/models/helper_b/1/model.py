import numpy as np
from helper import WHO
from lib.tools import shout

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.args = args

    def execute(self, requests):
        text = shout(WHO) + "|" + self.args["model_instance_name"] + "|" + self.args["model_instance_kind"]
        return [pb_utils.InferenceResponse([pb_utils.Tensor("Y", np.array([text.encode()], np.object_))])
                for _ in requests]
