"""Model control from inside a model: MODE "ready:NAME", "load:NAME" or "unload:NAME";
OUT is is_model_ready's answer, "ok", or the TritonModelException's message."""

import numpy as np

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            mode = pb_utils.get_input_tensor_by_name(request, "MODE").as_numpy()[0].decode()
            what, _, name = mode.partition(":")
            try:
                if what == "ready":
                    answer = str(pb_utils.is_model_ready(name))
                elif what == "load":
                    pb_utils.load_model(name)
                    answer = "ok"
                else:
                    pb_utils.unload_model(name)
                    answer = "ok"
            except pb_utils.TritonModelException as exc:
                answer = str(exc)
            out = pb_utils.Tensor("OUT", np.array([answer.encode()], dtype=np.object_))
            responses.append(pb_utils.InferenceResponse([out]))
        return responses
