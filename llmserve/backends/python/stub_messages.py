"""The wire form of what crosses between the server and a stub: requests to execute,
a model's responses, BLS requests and their responses, errors. Plain tuples (the channel
carries plain data only); tensors go through Link.pack / Link.unpack.

  executed request  (key, model, [tensor], [output name], id, correlation id, version,
                     flags, timeout us, parameters, cancelled)
  model response    ([tensor], error | None, parameters | None)
  BLS request       (model, [tensor], version, id, [output name] | None, parameters,
                     correlation id, flags, timeout us)
  BLS response      (model, version, id, [tensor], parameters, error | None, final)
  error             (message, ErrorCode value)
"""

from __future__ import annotations

from typing import Any

from llmserve.core.errors import ErrorCode, InternalError, ServerError
from llmserve.core.types import InferenceRequest as CoreRequest
from llmserve.core.types import InferenceResponse as CoreResponse
from llmserve.core.types import RequestedOutput
from llmserve.core.types import Tensor as CoreTensor


def pack_error(error: ServerError) -> tuple[str, str]:
    return error.message, error.code.value


def unpack_error(wire: tuple[str, str]) -> ServerError:
    message, code = wire
    try:
        return ServerError(message, ErrorCode(code))
    except ValueError:
        return InternalError(message)


def pack_tensors(link: Any, tensors: list[CoreTensor]) -> list[tuple]:
    return [link.pack(t.name, t.datatype, t.data) for t in tensors]


def unpack_tensors(link: Any, wires: list[tuple]) -> list[CoreTensor]:
    return [CoreTensor(*link.unpack(w)) for w in wires]


def pack_bls_request(link: Any, r: CoreRequest) -> tuple:
    names = [o.name for o in r.requested_outputs] if r.requested_outputs is not None else None
    return (r.model_name, pack_tensors(link, list(r.inputs.values())), r.model_version, r.id,
            names, r.parameters, r.correlation_id, r.flags, r.timeout_us)


def unpack_bls_request(link: Any, wire: tuple) -> CoreRequest:
    model, inputs, version, rid, names, parameters, corr, flags, timeout = wire
    tensors = unpack_tensors(link, inputs)
    return CoreRequest(
        model_name=model, inputs={t.name: t for t in tensors}, model_version=version, id=rid,
        requested_outputs=[RequestedOutput(n) for n in names] if names is not None else None,
        parameters=parameters, correlation_id=corr, flags=flags, timeout_us=timeout)


def pack_bls_response(link: Any, r: CoreResponse) -> tuple:
    error = pack_error(r.error) if r.error is not None else None
    return (r.model_name, r.model_version, r.id, pack_tensors(link, r.outputs), r.parameters,
            error, r.final)


def unpack_bls_response(link: Any, wire: tuple) -> CoreResponse:
    model, version, rid, outputs, parameters, error, final = wire
    return CoreResponse(model, version, rid, unpack_tensors(link, outputs), parameters,
                        unpack_error(error) if error is not None else None, final)
