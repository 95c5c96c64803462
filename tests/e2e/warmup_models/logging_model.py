"""Appends one JSON line per execute() to the file named by the config parameter
`log_path`: the instance and each request's inputs. Requests whose IN starts with -1
get an error response (so a warmup sample can fail)."""

import json

import numpy as np

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.instance = args["model_instance_name"]
        config = json.loads(args["model_config"])
        self.log_path = config["parameters"]["log_path"]["string_value"]

    def execute(self, requests):
        seen, responses = [], []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            text = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()
            seen.append({"IN": x.tolist(), "IN_dtype": str(x.dtype),
                         "TEXT": [t.decode() for t in text.reshape(-1)],
                         "TEXT_shape": list(text.shape)})
            if x.size and x.reshape(-1)[0] == -1:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError("An Error Occurred")))
            else:
                responses.append(pb_utils.InferenceResponse(
                    [pb_utils.Tensor("OUT", (x * 2).astype(np.float32))]))
        with open(self.log_path, "a") as f:
            f.write(json.dumps({"instance": self.instance, "requests": seen}) + "\n")
        return responses
