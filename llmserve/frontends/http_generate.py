"""Triton's generate extension: POST .../generate returns one JSON
object, POST .../generate_stream streams one SSE `data: {json}` event per response."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import numpy as np
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from llmserve.core.errors import InvalidArgument, ServerError
from llmserve.core.types import InferenceRequest, InferenceResponse, Tensor
from llmserve.frontends.errors import as_server_error
from llmserve.frontends.http_common import read_body, until_disconnect
from llmserve.frontends.sse import EventStream
from llmserve.frontends.tensors import apply_parameters, parse_version
from llmserve.frontends.wire import parse_json, tensor_from_json
from llmserve.options import ServerOptions


def build_generate_request(server: Any, model: str, version: str, doc: Any) -> InferenceRequest:
    """Map generate JSON keys onto model inputs (by metadata) and request parameters."""
    if not isinstance(doc, dict):
        raise InvalidArgument("generate request must be a JSON object")
    request = InferenceRequest(model_name=model, inputs={}, model_version=parse_version(version))
    metadata = server.model_metadata(model, version)
    batched = server.model_config(model, version).max_batch_size > 0
    inputs = {i["name"]: i for i in metadata.get("inputs", [])}
    rid = doc.get("id", "")
    if not isinstance(rid, str):
        raise InvalidArgument("request 'id' must be a string")
    request.id = rid
    nested = doc.get("parameters", {})
    if not isinstance(nested, dict):
        raise InvalidArgument("'parameters' must be a JSON object")
    fields = dict(nested)
    fields.update((k, v) for k, v in doc.items() if k not in ("id", "parameters"))
    params: dict[str, Any] = {}
    for key, value in fields.items():
        if key in inputs:
            request.inputs[key] = generate_tensor(inputs[key], value, batched)
        else:
            params[key] = value
    apply_parameters(request, params)
    return request


def generate_tensor(meta: dict, value: Any, batched: bool) -> Tensor:
    name, datatype = meta["name"], meta["datatype"]
    flat = _flat_values(value)
    if datatype == "BYTES":
        flat = [v if isinstance(v, str) else json.dumps(v) for v in flat]
    dims = [int(d) for d in meta.get("shape", [])]
    if batched and dims:
        dims = dims[1:]
    shape = _fit_shape(name, dims, len(flat))
    if batched:
        shape = [1, *shape]
    return tensor_from_json(name, datatype, shape, flat)


def _flat_values(value: Any) -> list:
    if not isinstance(value, list):
        return [value]
    out: list = []
    for v in value:
        out.extend(_flat_values(v) if isinstance(v, list) else [v])
    return out


def _fit_shape(name: str, dims: list[int], count: int) -> list[int]:
    """Model dims (without batch) with -1 resolved so the shape holds `count` values."""
    fixed = 1
    for d in dims:
        if d >= 0:
            fixed *= d
    variable = [i for i, d in enumerate(dims) if d < 0]
    if not variable:
        if fixed != count:
            raise InvalidArgument(
                f"input '{name}' expects {fixed} element(s) for shape {dims}, got {count}"
            )
        return dims
    if fixed == 0 or count % fixed:
        raise InvalidArgument(f"{count} element(s) do not fit shape {dims} of input '{name}'")
    shape = [d if d >= 0 else 1 for d in dims]
    shape[variable[-1]] = count // fixed
    return shape


def response_json(response: InferenceResponse) -> dict:
    doc: dict[str, Any] = {}
    if response.id:
        doc["id"] = response.id
    doc["model_name"] = response.model_name
    doc["model_version"] = str(response.model_version)
    for tensor in response.outputs:
        doc[tensor.name] = tensor_value(tensor)
    return doc


def tensor_value(tensor: Tensor) -> Any:
    """1-element tensors become scalars; BYTES become str; others a flat list of their
    elements in row-major order, as Triton's generate writes them (like infer's "data")."""
    data = np.asarray(tensor.data)
    if tensor.datatype in ("FP16", "BF16"):
        data = data.astype(np.float32)
    if data.size == 1:
        item = data.reshape(-1)[0]
        return _decode(item) if tensor.datatype == "BYTES" else item.item()
    flat = data.reshape(-1).tolist()
    if tensor.datatype == "BYTES":
        return [_decode(item) for item in flat]
    return flat


def _decode(item: Any) -> Any:
    if isinstance(item, (bytes, bytearray)):
        return bytes(item).decode("utf-8", errors="replace")
    return item


async def collect_one(agen: AsyncIterator[InferenceResponse], model: str) -> InferenceResponse:
    """Every response of a /generate request; exactly one may carry outputs."""
    found: InferenceResponse | None = None
    try:
        async for response in agen:
            if response.error is not None:
                raise response.error
            if response.flag_only:
                continue
            if found is not None:
                raise InvalidArgument(
                    f"generate expects exactly one response from model '{model}'; "
                    "use generate_stream for models that send several"
                )
            found = response
    finally:
        await agen.aclose()  # type: ignore[attr-defined]
    if found is None:
        raise ServerError(f"model '{model}' sent no response")
    return found


async def _first_event(agen: AsyncIterator[InferenceResponse]) -> InferenceResponse | None:
    async for response in agen:
        if not response.flag_only:
            return response
        if response.final:
            return None
    return None


def _event(doc: dict) -> dict:
    return {"data": json.dumps(doc)}


async def stream_events(
    first: InferenceResponse | None, agen: AsyncIterator[InferenceResponse], request: InferenceRequest
) -> AsyncIterator[dict]:
    """One SSE `data:` event per response; cancels the request unless it finished,
    however the stream ends (a client that leaves included)."""
    try:
        response = first
        while response is not None:
            if response.error is not None:
                yield _event({"error": response.error.message})
            elif not response.flag_only:
                yield _event(response_json(response))
            if response.final:
                return
            response = await anext(agen, None)
    except Exception as exc:  # an error after the stream began is an event, not a status
        yield _event({"error": as_server_error(exc).message})
    finally:
        if response is None or not response.final:
            request.cancel.cancel()
        with anyio.CancelScope(shield=True):
            await agen.aclose()  # type: ignore[attr-defined]


def generate_router(server: Any, options: ServerOptions) -> APIRouter:
    router = APIRouter()
    limit = options.http_max_body_bytes

    async def parse(request: Request, model: str, version: str) -> InferenceRequest:
        doc = parse_json(await read_body(request, limit))
        return build_generate_request(server, model, version, doc)

    @router.post("/v2/models/{model}/generate")
    @router.post("/v2/models/{model}/versions/{version}/generate")
    async def generate(request: Request, model: str, version: str = "") -> Response:
        ireq = await parse(request, model, version)
        work = collect_one(server.infer(ireq), model)
        response = await until_disconnect(request, work, ireq.cancel)
        return JSONResponse(response_json(response))

    @router.post("/v2/models/{model}/generate_stream")
    @router.post("/v2/models/{model}/versions/{version}/generate_stream")
    async def generate_stream(request: Request, model: str, version: str = "") -> Response:
        ireq = await parse(request, model, version)
        agen = server.infer(ireq)
        try:
            first = await until_disconnect(request, _first_event(agen), ireq.cancel)
            if first is not None and first.error is not None and first.final:
                raise first.error
        except BaseException:
            await agen.aclose()
            raise
        return EventStream(stream_events(first, agen, ireq), sep="\n", ping=15)

    return router
