"""Error mapping at the frontend edge: ServerError -> HTTP status + `{"error": msg}` and
ServerError -> gRPC status. Every frontend maps errors here, once."""

from __future__ import annotations

import json
import logging

import grpc
from starlette.responses import Response

from llmserve.core.errors import InternalError, ServerError

logger = logging.getLogger(__name__)


class BodyTooLarge(Exception):
    """The request body passed options.http_max_body_bytes (HTTP 413)."""

    def __init__(self, limit: int):
        super().__init__(f"request body exceeds the limit of {limit} bytes")
        self.limit = limit


class ClientDisconnected(Exception):
    """The HTTP client went away before its response was ready."""


def as_server_error(exc: BaseException) -> ServerError:
    """Any exception as a ServerError; unexpected ones become INTERNAL and are logged."""
    if isinstance(exc, ServerError):
        return exc
    logger.error("unexpected error in a frontend", exc_info=exc)
    return InternalError(f"{type(exc).__name__}: {exc}")


def error_response(status: int, message: str) -> Response:
    body = json.dumps({"error": message}).encode("utf-8")
    return Response(body, status_code=status, media_type="application/json")


def http_error(exc: BaseException) -> Response:
    if isinstance(exc, BodyTooLarge):
        return error_response(413, str(exc))
    err = as_server_error(exc)
    return error_response(err.http_status, err.message)


def grpc_code(err: ServerError) -> grpc.StatusCode:
    return grpc.StatusCode[err.grpc_status_name]
