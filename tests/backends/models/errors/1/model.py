"""MODE: ok | raise | short_list | none | none_item | code:<N> | not_found."""

import numpy as np

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        modes = [pb_utils.get_input_tensor_by_name(r, "MODE").as_numpy()[0].decode() for r in requests]
        mode = modes[0]
        if mode == "raise":
            raise ValueError("model blew up")
        if mode == "short_list":
            return []
        if mode == "none":
            return None
        out = []
        for m in modes:
            if m == "none_item":
                out.append(None)
            elif m.startswith("code:"):
                out.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError("custom failure", int(m[5:]))))
            elif m == "not_found":
                out.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError("file not found", pb_utils.TritonError.NOT_FOUND)))
            else:
                out.append(pb_utils.InferenceResponse(
                    [pb_utils.Tensor("OUT", np.array([m.encode()], dtype=np.object_))]))
        return out
