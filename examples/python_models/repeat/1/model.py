"""Decoupled: one response per element of IN (sent from a thread after execute returns),
then a flag-only final. An empty IN sends zero responses."""

import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.threads = []

    def execute(self, requests):
        for request in requests:
            values = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            delay = pb_utils.get_input_tensor_by_name(request, "DELAY_MS")
            delay_s = float(delay.as_numpy()[0]) / 1000 if delay is not None else 0.0
            sender = request.get_response_sender()
            t = threading.Thread(target=self._send, args=(values, delay_s, sender, request))
            t.start()
            self.threads.append(t)
        return None

    def _send(self, values, delay_s, sender, request):
        for i, v in enumerate(values):
            if sender.is_cancelled():
                break
            time.sleep(delay_s)
            sender.send(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUT", np.array([v], np.int32)),
                pb_utils.Tensor("IDX", np.array([i], np.uint32)),
            ]))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def finalize(self):
        for t in self.threads:
            t.join()
