"""The FastAPI application of the HTTP port (KServe v2 + generate, plus any extra
routers such as the OpenAI API) and the metrics application of the metrics port."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, FastAPI
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llmserve.core import prometheus_text
from llmserve.core.errors import ServerError
from llmserve.frontends.errors import (
    BodyTooLarge,
    ClientDisconnected,
    error_response,
    http_error,
)
from llmserve.frontends.http_common import BodyLimitMiddleware, ErrorGuardMiddleware
from llmserve.frontends.http_generate import generate_router
from llmserve.frontends.http_kserve import kserve_router
from llmserve.frontends.load_metrics import LoadMetricsMiddleware
from llmserve.frontends.openai import add_openai_schemas, openai_router
from llmserve.frontends.restricted import RestrictedApiMiddleware
from llmserve.options import ServerOptions


def build_http_app(
    server: Any, options: ServerOptions, routers: Sequence[APIRouter] = ()
) -> FastAPI:
    app = FastAPI(title="llmserve", docs_url=None, redoc_url=None)
    app.include_router(kserve_router(server, options))
    app.include_router(generate_router(server, options))
    app.include_router(openai_router(server, options))
    add_openai_schemas(app)
    for router in routers:
        app.include_router(router)

    async def on_server_error(request: Request, exc: Exception) -> Response:
        return http_error(exc)

    async def on_disconnect(request: Request, exc: Exception) -> Response:
        return error_response(400, "client disconnected; request cancelled")

    async def on_http_exception(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return error_response(exc.status_code, str(exc.detail))

    app.add_exception_handler(ServerError, on_server_error)
    app.add_exception_handler(BodyTooLarge, on_server_error)
    app.add_exception_handler(ClientDisconnected, on_disconnect)
    app.add_exception_handler(StarletteHTTPException, on_http_exception)
    # the last added runs first: restrictions, load metrics, the body limit, the guard
    app.add_middleware(ErrorGuardMiddleware)
    app.add_middleware(BodyLimitMiddleware, limit=options.http_max_body_bytes)
    app.add_middleware(LoadMetricsMiddleware, registry=server.metrics_registry)
    if options.http_restricted_apis or options.openai_api_key is not None:
        app.add_middleware(RestrictedApiMiddleware, restrictions=options.http_restricted_apis,
                           openai_api_key=options.openai_api_key)
    return app


def build_metrics_app(server: Any) -> Starlette:
    async def metrics(request: Request) -> Response:
        return Response(prometheus_text.render(server.metrics_registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[Route("/metrics", metrics, methods=["GET"])])
