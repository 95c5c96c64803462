"""OpenAI's error shape {"error": {"message", "type", "param", "code"}} and the mapping of
ServerError codes and request validation errors onto it (400 / 404 / 503 / 500)."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError
from starlette.responses import JSONResponse

from llmserve.core.errors import ErrorCode, ServerError

logger = logging.getLogger(__name__)

_TYPES = {400: "invalid_request_error", 404: "invalid_request_error", 503: "server_error"}


class OpenAIError(Exception):
    """An error reported to the client in OpenAI's shape."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, type_: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type_ or _TYPES.get(status, "server_error" if status >= 500 else
                                         "invalid_request_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


def bad_request(message: str, param: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param=param)


def model_not_found(name: str) -> OpenAIError:
    return OpenAIError(404, f"The model `{name}` does not exist.", param="model",
                       code="model_not_found")


def from_server_error(err: ServerError) -> OpenAIError:
    if err.code == ErrorCode.UNAVAILABLE:
        return OpenAIError(503, err.message, code="service_unavailable")
    if err.code == ErrorCode.NOT_FOUND:
        return OpenAIError(404, err.message, code="not_found")
    return OpenAIError(err.http_status, err.message)


def from_validation_error(exc: ValidationError) -> OpenAIError:
    """The first problem of a pydantic validation error, naming the parameter."""
    first = exc.errors()[0]
    param = ".".join(str(p) for p in first.get("loc", ())) or None
    msg = first.get("msg", "invalid value")
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    where = f"'{param}'" if param else "request"
    return bad_request(f"Invalid value for {where}: {msg}", param=param)


def as_openai_error(exc: BaseException) -> OpenAIError:
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, ValidationError):
        return from_validation_error(exc)
    if isinstance(exc, ServerError):
        return from_server_error(exc)
    logger.error("unexpected error in the OpenAI frontend", exc_info=exc)
    return OpenAIError(500, f"{type(exc).__name__}: {exc}")


def error_response(exc: BaseException) -> JSONResponse:
    err = as_openai_error(exc)
    return JSONResponse(err.body(), status_code=err.status)
