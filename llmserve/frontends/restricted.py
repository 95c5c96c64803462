"""Restricted endpoints, as Triton's --http-restricted-api / --grpc-restricted-protocol
define them: API groups whose calls must carry a header with a set value (HTTP 403,
gRPC UNAVAILABLE otherwise), plus the OpenAI routes' bearer API key."""

from __future__ import annotations

import json
import re
from typing import Any

import grpc
from starlette.types import ASGIApp, Receive, Scope, Send

from llmserve.frontends.errors import error_response
from llmserve.restrictions import Restrictions, value_matches

_MODEL = r"/v2/models/[^/]+(?:/versions/[^/]+)?"
_HTTP_ROUTES: list[tuple[re.Pattern, str]] = [(re.compile(p), g) for p, g in (
    (r"/v2/health/(?:live|ready)", "health"),
    (r"/v2", "metadata"),
    (r"/v2/models/stats", "statistics"),
    (r"/v2/repository/.*", "model-repository"),
    (r"/v2/(?:system|cuda)sharedmemory(?:/.*)?", "shared-memory"),
    (r"/v2/trace/setting", "trace"),
    (r"/v2/logging", "logging"),
    (_MODEL + r"/ready", "health"),
    (_MODEL + r"/(?:infer|generate|generate_stream)", "inference"),
    (_MODEL + r"/config", "model-config"),
    (_MODEL + r"/stats", "statistics"),
    (_MODEL + r"/trace/setting", "trace"),
    (_MODEL, "metadata"),
    (r"/v1/.*", "openai"),
)]

_GRPC_SERVICE = "/inference.GRPCInferenceService/"
_GRPC_METHODS = {
    "ServerLive": "health", "ServerReady": "health", "ModelReady": "health",
    "ServerMetadata": "metadata", "ModelMetadata": "metadata",
    "ModelInfer": "inference", "ModelStreamInfer": "inference",
    "ModelConfig": "model-config", "ModelStatistics": "statistics",
    "RepositoryIndex": "model-repository", "RepositoryModelLoad": "model-repository",
    "RepositoryModelUnload": "model-repository",
    "SystemSharedMemoryStatus": "shared-memory", "SystemSharedMemoryRegister": "shared-memory",
    "SystemSharedMemoryUnregister": "shared-memory", "CudaSharedMemoryStatus": "shared-memory",
    "CudaSharedMemoryRegister": "shared-memory", "CudaSharedMemoryUnregister": "shared-memory",
    "TraceSetting": "trace", "LogSettings": "logging",
}
_GRPC_CATEGORIES = {_GRPC_SERVICE + m: g for m, g in _GRPC_METHODS.items()}
_GRPC_CATEGORIES["/grpc.health.v1.Health/Check"] = "health"


def http_group(path: str) -> str | None:
    for pattern, group in _HTTP_ROUTES:
        if pattern.fullmatch(path):
            return group
    return None


def _header(scope: Scope, name: str) -> bytes | None:
    key = name.encode("latin-1")
    for k, v in scope.get("headers", []):
        if k == key:
            return v
    return None


class RestrictedApiMiddleware:
    """Refuses calls to restricted HTTP groups that lack the group's header (403 and
    Triton's message), and OpenAI calls without the API key (401, OpenAI's error shape),
    before any body is read."""

    def __init__(self, app: ASGIApp, restrictions: Restrictions, openai_api_key: str | None):
        self.app = app
        self.restrictions = restrictions
        self.openai_api_key = openai_api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self._refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope) -> Any:
        group = http_group(scope.get("path", ""))
        if group is None:
            return None
        rule = self.restrictions.get(group)
        if rule is not None and not value_matches(_header(scope, rule[0]), rule[1]):
            return error_response(403, f"This API is restricted, expecting header '{rule[0]}'")
        if group == "openai" and self.openai_api_key is not None:
            return _openai_key_refusal(_header(scope, "authorization"), self.openai_api_key)
        return None


def _openai_key_refusal(authorization: bytes | None, key: str) -> Any:
    from starlette.responses import Response

    scheme, _, token = (authorization or b"").partition(b" ")
    if scheme.lower() == b"bearer" and value_matches(token.strip(), key):
        return None
    message = ("You didn't provide an API key. Provide it as 'Authorization: Bearer KEY'."
               if not token.strip() else "Incorrect API key provided.")
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None,
                      "code": "invalid_api_key"}}
    return Response(json.dumps(body), status_code=401, media_type="application/json",
                    headers={"WWW-Authenticate": "Bearer"})


class RestrictedProtocolInterceptor(grpc.aio.ServerInterceptor):
    """gRPC side: a call to a restricted group without its metadata key/value ends with
    UNAVAILABLE and Triton's message."""

    def __init__(self, restrictions: Restrictions):
        self.restrictions = restrictions

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        group = _GRPC_CATEGORIES.get(details.method)
        rule = self.restrictions.get(group) if group is not None else None
        if handler is None or rule is None:
            return handler
        given = next((v for k, v in details.invocation_metadata or () if k.lower() == rule[0]),
                     None)
        if value_matches(given, rule[1]):
            return handler
        return _refusing_handler(handler, f"This protocol is restricted, expecting header "
                                          f"'{rule[0]}'")


def _refusing_handler(handler: Any, message: str) -> Any:
    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAVAILABLE, message)

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(bool(handler.request_streaming), bool(handler.response_streaming))]
    return make(refuse, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
