"""KServe v2 HTTP/REST routes: health, metadata, config, infer,
repository index/load/unload and statistics, over the InferenceServer contract."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from llmserve.core.errors import InvalidArgument, ServerError, Unsupported
from llmserve.core.types import InferenceRequest, InferenceResponse
from llmserve.frontends.http_common import as_bool, read_body, until_disconnect
from llmserve.frontends.tensors import parse_version
from llmserve.frontends.wire import (
    HEADER_LENGTH,
    apply_classification,
    decode_infer_request,
    encode_infer_response,
    parse_json,
)
from llmserve.options import ServerOptions

DECOUPLED_HTTP = "HTTP end point doesn't support models with decoupled transaction policy"


def config_json(config: Any) -> dict:
    """Model config as Triton's config endpoint renders it (A's config_to_json_dict)."""
    from llmserve.repository import config_to_json_dict

    return config_to_json_dict(config)


def is_batched(server: Any, name: str, version: str) -> bool:
    return server.model_config(name, version).max_batch_size > 0


async def run_single(server: Any, request: InferenceRequest) -> InferenceResponse:
    """Run a non-decoupled request to its one response; response errors are raised."""
    result: InferenceResponse | None = None
    agen = server.infer(request)
    try:
        async for response in agen:
            if response.error is not None:
                raise response.error
            if result is None or response.outputs:
                result = response
    finally:
        await agen.aclose()
    if result is None:
        raise ServerError(f"model '{request.model_name}' sent no response")
    return result


def kserve_router(server: Any, options: ServerOptions) -> APIRouter:
    router = APIRouter()
    limit = options.http_max_body_bytes

    @router.get("/v2/health/live")
    async def health_live() -> Response:
        return Response(status_code=200 if server.is_live() else 400)

    @router.get("/v2/health/ready")
    async def health_ready() -> Response:
        return Response(status_code=200 if server.is_ready() else 400)

    @router.get("/v2")
    async def server_metadata() -> Response:
        return JSONResponse(server.metadata())

    # stats routes come before /v2/models/{model} so "stats" is not read as a model name
    @router.get("/v2/models/stats")
    async def all_stats() -> Response:
        return JSONResponse(server.statistics("", ""))

    @router.get("/v2/models/{model}/stats")
    @router.get("/v2/models/{model}/versions/{version}/stats")
    async def model_stats(model: str, version: str = "") -> Response:
        parse_version(version)
        return JSONResponse(server.statistics(model, version))

    @router.get("/v2/models/{model}")
    @router.get("/v2/models/{model}/versions/{version}")
    async def model_metadata(model: str, version: str = "") -> Response:
        parse_version(version)
        return JSONResponse(server.model_metadata(model, version))

    @router.get("/v2/models/{model}/ready")
    @router.get("/v2/models/{model}/versions/{version}/ready")
    async def model_ready(model: str, version: str = "") -> Response:
        try:
            parse_version(version)
            ready = server.model_ready(model, version)
        except ServerError:
            ready = False
        return Response(status_code=200 if ready else 400)

    @router.get("/v2/models/{model}/config")
    @router.get("/v2/models/{model}/versions/{version}/config")
    async def model_config(model: str, version: str = "") -> Response:
        parse_version(version)
        return JSONResponse(config_json(server.model_config(model, version)))

    @router.post("/v2/models/{model}/infer")
    @router.post("/v2/models/{model}/versions/{version}/infer")
    async def infer(request: Request, model: str, version: str = "") -> Response:
        body = await read_body(request, limit)  # read first: keep-alive needs a drained body
        model_version = parse_version(version)
        if server.is_decoupled(model, version):
            raise Unsupported(DECOUPLED_HTTP)
        ireq, policy = decode_infer_request(
            body, request.headers.get(HEADER_LENGTH), model, model_version
        )
        response = await until_disconnect(request, run_single(server, ireq), ireq.cancel)
        if any(r.classification for r in ireq.requested_outputs or []):
            batched = is_batched(server, model, version)
            apply_classification(
                response, ireq.requested_outputs, batched,
                lambda out: _labels(server, response, out),
            )
        content, headers = encode_infer_response(response, policy)
        return Response(content, status_code=200, headers=headers)

    @router.post("/v2/repository/index")
    async def repository_index(request: Request) -> Response:
        doc = await _optional_json(request, limit)
        ready = as_bool(doc.get("ready", False), "'ready'")
        return JSONResponse(server.repository_index(ready_only=ready))

    @router.post("/v2/repository/models/{model}/load")
    async def repository_load(request: Request, model: str) -> Response:
        doc = await _optional_json(request, limit)
        params = _parameters(doc)
        config = params.get("config")
        if config is not None and not isinstance(config, str):
            raise InvalidArgument("load parameter 'config' must be a JSON string")
        files: dict[str, bytes] = {}
        for key, value in params.items():
            if key.startswith("file:"):
                if not isinstance(value, str):
                    raise InvalidArgument(f"load parameter '{key}' must be base64 text")
                try:
                    files[key] = base64.b64decode(value, validate=True)
                except (binascii.Error, ValueError):
                    raise InvalidArgument(f"load parameter '{key}' is not valid base64") from None
        if files and config is None:
            raise InvalidArgument("load with files requires the 'config' parameter")
        await server.load_model(model, config, files or None)
        return Response(status_code=200)

    @router.post("/v2/repository/models/{model}/unload")
    async def repository_unload(request: Request, model: str) -> Response:
        doc = await _optional_json(request, limit)
        params = _parameters(doc)
        dependents = as_bool(params.get("unload_dependents", False), "'unload_dependents'")
        await server.unload_model(model, unload_dependents=dependents)
        return Response(status_code=200)

    @router.api_route("/v2/systemsharedmemory{rest:path}", methods=["GET", "POST"])
    @router.api_route("/v2/cudasharedmemory{rest:path}", methods=["GET", "POST"])
    async def shared_memory(rest: str = "") -> Response:
        raise Unsupported("shared memory is not supported by this server")

    @router.api_route("/v2/trace/setting", methods=["GET", "POST"])
    @router.api_route("/v2/models/{model}/trace/setting", methods=["GET", "POST"])
    async def trace_setting(model: str = "") -> Response:
        raise Unsupported("trace settings are not supported by this server")

    @router.api_route("/v2/logging", methods=["GET", "POST"])
    async def log_settings() -> Response:
        raise Unsupported("log settings are not supported by this server")

    return router


async def _optional_json(request: Request, limit: int) -> dict:
    body = await read_body(request, limit)
    if not body.strip():
        return {}
    doc = parse_json(body)
    if not isinstance(doc, dict):
        raise InvalidArgument("request body must be a JSON object")
    return doc


def _parameters(doc: dict) -> dict:
    params = doc.get("parameters", {})
    if not isinstance(params, dict):
        raise InvalidArgument("'parameters' must be a JSON object")
    return params


def _labels(server: Any, response: Any, output: str) -> list[str] | None:
    labels_of = getattr(server, "output_labels", None)
    if labels_of is None:
        return None
    return labels_of(response.model_name, str(response.model_version), output)
