"""The OpenAI API routes (/v1/models, /v1/completions, /v1/chat/completions) as a
FastAPI router that the HTTP frontend mounts on the KServe port."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, FastAPI
from pydantic import ValidationError
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from llmserve.frontends.errors import BodyTooLarge, ClientDisconnected
from llmserve.frontends.http_common import read_body
from llmserve.frontends.openai.chat import create_chat_completion
from llmserve.frontends.openai.completions import create_completion
from llmserve.frontends.openai.errors import bad_request, error_response, model_not_found
from llmserve.frontends.openai.models_discovery import ModelCatalog, TextModel
from llmserve.frontends.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
)
from llmserve.frontends.wire import parse_json
from llmserve.options import ServerOptions

logger = logging.getLogger(__name__)


def _body_schemas() -> tuple[dict[type, dict], dict[str, Any]]:
    """JSON schemas of the request bodies, referenced from the routes' OpenAPI entries
    ($ref -> components/schemas), so /openapi.json documents what the routes parse."""
    keys, doc = models_json_schema(
        [(CompletionRequest, "validation"), (ChatCompletionRequest, "validation")],
        ref_template="#/components/schemas/{model}")
    return {model: ref for (model, _), ref in keys.items()}, doc.get("$defs", {})


_REFS, _DEFS = _body_schemas()


def _body(schema: type) -> dict[str, Any]:
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": _REFS[schema]}}}}


def add_openai_schemas(app: FastAPI) -> None:
    """Put the request body schemas into the app's OpenAPI components."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        doc = build()
        doc.setdefault("components", {}).setdefault("schemas", {}).update(_DEFS)
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def _card(model: TextModel) -> ModelCard:
    return ModelCard(id=model.name, max_model_len=model.max_model_len)


def openai_router(server: Any, options: ServerOptions) -> APIRouter:
    router = APIRouter()
    catalog = ModelCatalog(server)
    limit = options.http_max_body_bytes

    async def body_of(request: Request, schema: type) -> Any:
        doc = parse_json(await read_body(request, limit))  # InvalidArgument: 400
        if not isinstance(doc, dict):
            raise bad_request("request body must be a JSON object")
        return schema.model_validate(doc)

    async def guarded(request: Request, schema: type, handler: Any) -> Response:
        try:
            req = await body_of(request, schema)
            return await handler(server, catalog, request, req)
        except (BodyTooLarge, ClientDisconnected):
            raise  # the HTTP app answers these (413 / disconnect)
        except (ValidationError, Exception) as exc:  # noqa: BLE001 - mapped at the edge
            return error_response(exc)

    @router.get("/v1/models")
    async def list_models() -> Response:
        cards = [_card(m) for m in catalog.text_models()]
        return JSONResponse(ModelList(data=cards).model_dump())

    @router.get("/v1/models/{model:path}")
    async def get_model(model: str) -> Response:
        try:
            found = next((m for m in catalog.text_models() if m.name == model), None)
            if found is None:
                raise model_not_found(model)
            return JSONResponse(_card(found).model_dump())
        except Exception as exc:  # noqa: BLE001
            return error_response(exc)

    @router.post("/v1/completions", openapi_extra=_body(CompletionRequest))
    async def completions(request: Request) -> Response:
        return await guarded(request, CompletionRequest, create_completion)

    @router.post("/v1/chat/completions", openapi_extra=_body(ChatCompletionRequest))
    async def chat_completions(request: Request) -> Response:
        return await guarded(request, ChatCompletionRequest, create_chat_completion)

    return router
