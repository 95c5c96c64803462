"""BLS: MODE=sync|async calls add_sub (X + X); MODE=decoupled streams from repeat and sums;
MODE=missing calls an unknown model and returns its error."""

import asyncio

import numpy as np

import triton_python_backend_utils as pb_utils


def _add_sub_request(x):
    return pb_utils.InferenceRequest(
        model_name="add_sub",
        inputs=[pb_utils.Tensor("INPUT0", x[None]), pb_utils.Tensor("INPUT1", x[None])],
        requested_output_names=["OUTPUT0"],
    )


class TritonPythonModel:
    async def execute(self, requests):
        return await asyncio.gather(*(self._one(r) for r in requests))

    async def _one(self, request):
        mode = pb_utils.get_input_tensor_by_name(request, "MODE").as_numpy()[0].decode()
        x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
        if mode == "sync":
            resp = _add_sub_request(x).exec()
        elif mode == "async":
            resp = await _add_sub_request(x).async_exec()
        elif mode == "missing":
            resp = pb_utils.InferenceRequest("no_such_model", [pb_utils.Tensor("A", x)], ["B"]).exec()
        else:
            req = pb_utils.InferenceRequest(
                "repeat", [pb_utils.Tensor("IN", x.astype(np.int32))], ["OUT"])
            values = []
            async for r in await req.async_exec(decoupled=True):
                if r.has_error():
                    return pb_utils.InferenceResponse(error=r.error())
                if r.output_tensors():
                    values.append(float(pb_utils.get_output_tensor_by_name(r, "OUT").as_numpy()[0]))
            return pb_utils.InferenceResponse([pb_utils.Tensor("Y", np.array(values, np.float32))])
        if resp.has_error():
            return pb_utils.InferenceResponse(error=resp.error())
        out = pb_utils.get_output_tensor_by_name(resp, "OUTPUT0").as_numpy()[0]
        return pb_utils.InferenceResponse([pb_utils.Tensor("Y", out)])
