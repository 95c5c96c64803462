"""TritonError (with Triton's error codes) and TritonModelException, as pb_utils has them."""

from __future__ import annotations

from llmserve.core.errors import ErrorCode, ServerError


class TritonModelException(Exception):
    """Raised by pb_utils on misuse; a model may raise it too."""


class TritonError(Exception):
    """An error a model puts in a response: TritonError(message, code=TritonError.INTERNAL)."""

    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7

    def __init__(self, message: str, code: int = INTERNAL):
        super().__init__(message)
        self._message = str(message)
        self._code = int(code)

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code

    def __repr__(self) -> str:
        return f"TritonError({self._message!r}, code={self._code})"


_TO_SERVER = {
    TritonError.UNKNOWN: ErrorCode.UNKNOWN,
    TritonError.INTERNAL: ErrorCode.INTERNAL,
    TritonError.NOT_FOUND: ErrorCode.NOT_FOUND,
    TritonError.INVALID_ARG: ErrorCode.INVALID_ARG,
    TritonError.UNAVAILABLE: ErrorCode.UNAVAILABLE,
    TritonError.UNSUPPORTED: ErrorCode.UNSUPPORTED,
    TritonError.ALREADY_EXISTS: ErrorCode.ALREADY_EXISTS,
    TritonError.CANCELLED: ErrorCode.CANCELLED,
}
_FROM_SERVER = {v: k for k, v in _TO_SERVER.items()}


def to_server_error(error: TritonError) -> ServerError:
    return ServerError(error.message(), _TO_SERVER.get(error.code(), ErrorCode.INTERNAL))


def from_server_error(error: ServerError) -> TritonError:
    return TritonError(error.message, _FROM_SERVER.get(error.code, TritonError.INTERNAL))
