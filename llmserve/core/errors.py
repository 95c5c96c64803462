"""One small exception hierarchy carrying Triton's error codes; frontends map them at the edge."""

from __future__ import annotations

import enum


class ErrorCode(enum.Enum):
    UNKNOWN = "UNKNOWN"
    INTERNAL = "INTERNAL"
    NOT_FOUND = "NOT_FOUND"
    INVALID_ARG = "INVALID_ARG"
    UNAVAILABLE = "UNAVAILABLE"
    UNSUPPORTED = "UNSUPPORTED"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    CANCELLED = "CANCELLED"


# Triton's HTTP server mapping.
_HTTP_STATUS = {
    ErrorCode.INTERNAL: 500,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.UNSUPPORTED: 501,
    ErrorCode.INVALID_ARG: 400,
    ErrorCode.ALREADY_EXISTS: 400,
    ErrorCode.CANCELLED: 400,
    ErrorCode.UNKNOWN: 400,
}

# grpc.StatusCode names; kept as strings so this module needs no grpc import.
_GRPC_STATUS = {
    ErrorCode.INTERNAL: "INTERNAL",
    ErrorCode.NOT_FOUND: "NOT_FOUND",
    ErrorCode.UNAVAILABLE: "UNAVAILABLE",
    ErrorCode.UNSUPPORTED: "UNIMPLEMENTED",
    ErrorCode.INVALID_ARG: "INVALID_ARGUMENT",
    ErrorCode.ALREADY_EXISTS: "ALREADY_EXISTS",
    ErrorCode.CANCELLED: "CANCELLED",
    ErrorCode.UNKNOWN: "UNKNOWN",
}


class ServerError(Exception):
    """An error with a Triton status code. `str(e)` is the user-facing message."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, code: ErrorCode | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS[self.code]

    @property
    def grpc_status_name(self) -> str:
        return _GRPC_STATUS[self.code]


class InvalidArgument(ServerError):
    code = ErrorCode.INVALID_ARG


class NotFound(ServerError):
    code = ErrorCode.NOT_FOUND


class Unavailable(ServerError):
    code = ErrorCode.UNAVAILABLE


class QueueFull(Unavailable):
    """A bounded request queue is full (the caller may map it to its own message)."""


class Unsupported(ServerError):
    code = ErrorCode.UNSUPPORTED


class InternalError(ServerError):
    code = ErrorCode.INTERNAL


class AlreadyExists(ServerError):
    code = ErrorCode.ALREADY_EXISTS


class Cancelled(ServerError):
    code = ErrorCode.CANCELLED

