"""Test model for the OpenAI frontend: answers any prompt with pieces of SCRIPT (cycled)
up to max_tokens pieces, one response per piece when streaming, else one response.
A piece may split a word, so stop strings span responses. The parameter delay_ms sleeps
before each piece; a cancelled request stops at the next piece."""

import json
import time

import numpy as np

import triton_python_backend_utils as pb_utils

SCRIPT = ["Hello", " wor", "ld", "!", " The", " qu", "ick", " brown", " fox", "."]


def _scalar(request, name, default):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return default if tensor is None else tensor.as_numpy().reshape(-1)[0]


def _text(pieces):
    return pb_utils.InferenceResponse(output_tensors=[
        pb_utils.Tensor("text_output", np.array(["".join(pieces).encode()], dtype=np.object_))])


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"]).get("parameters", {})
        self.delay = float(params.get("delay_ms", {}).get("string_value", "0")) / 1000.0

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            n = int(_scalar(request, "max_tokens", 16))
            stream = bool(_scalar(request, "stream", False))
            pieces = []
            for i in range(n):
                if request.is_cancelled():
                    break
                time.sleep(self.delay)
                pieces.append(SCRIPT[i % len(SCRIPT)])
                if stream:
                    sender.send(_text(pieces[-1:]))
            if not stream and not request.is_cancelled():
                sender.send(_text(pieces))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
