"""BLS: MODE=sync|async calls add_sub (X + X), MODE=bytes_sync|bytes_async naming it by
a numpy bytes element; MODE=decoupled streams from repeat with `async for`,
MODE=decoupled_for with a plain `for` over async_exec's responses (walked twice, as
Triton replays them); MODE=missing calls an unknown model and returns its error."""

import asyncio

import numpy as np

import triton_python_backend_utils as pb_utils


def _add_sub_request(x, name="add_sub"):
    return pb_utils.InferenceRequest(
        model_name=name,
        inputs=[pb_utils.Tensor("INPUT0", x[None]), pb_utils.Tensor("INPUT1", x[None])],
        requested_output_names=["OUTPUT0"],
    )


class TritonPythonModel:
    async def execute(self, requests):
        return await asyncio.gather(*(self._one(r) for r in requests))

    async def _one(self, request):
        mode = pb_utils.get_input_tensor_by_name(request, "MODE").as_numpy()[0].decode()
        x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
        # what the stock bls example does: a name straight out of a BYTES tensor
        bytes_name = np.array([b"add_sub"], dtype=np.object_)[0]
        if mode == "sync":
            resp = _add_sub_request(x).exec()
        elif mode == "async":
            resp = await _add_sub_request(x).async_exec()
        elif mode == "bytes_sync":
            resp = _add_sub_request(x, bytes_name).exec()
        elif mode == "bytes_async":
            resp = await _add_sub_request(x, np.bytes_(b"add_sub")).async_exec()
        elif mode == "decoupled_for":
            return await self._decoupled_for(x)
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

    async def _decoupled_for(self, x):
        req = pb_utils.InferenceRequest(
            "repeat", [pb_utils.Tensor("IN", x.astype(np.int32))], ["OUT"])
        responses = await req.async_exec(decoupled=True)
        walks = []
        for _ in range(2):
            values = []
            for r in responses:
                if r.has_error():
                    return pb_utils.InferenceResponse(error=r.error())
                if r.output_tensors():
                    values.append(float(pb_utils.get_output_tensor_by_name(r, "OUT").as_numpy()[0]))
            walks.append(values)
        if walks[0] != walks[1]:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"replay differs: {walks}"))
        return pb_utils.InferenceResponse([pb_utils.Tensor("Y", np.array(walks[0], np.float32))])
