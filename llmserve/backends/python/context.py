"""Which server and model the pb_utils calls of the current thread or task belong to.

Set by the Python backend around initialize/execute; BLS, model control and custom
metrics look it up. Threads a model starts itself fall back to the last started server.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Any

from llmserve.backends.python.errors import TritonModelException


@dataclass(slots=True)
class ModelContext:
    server: Any
    model_name: str
    in_execute: bool = False
    # cancellation tokens of the requests the running execute serves: decoupled BLS calls
    # made for them end when all of them are cancelled (see bls.ResponseIterator)
    parents: tuple[Any, ...] = ()


_CURRENT: contextvars.ContextVar[ModelContext | None] = contextvars.ContextVar(
    "llmserve_pb_context", default=None
)
_DEFAULT_SERVER: list[Any] = []


def set_default_server(server: Any) -> None:
    _DEFAULT_SERVER[:] = [server]


def clear_default_server(server: Any) -> None:
    if _DEFAULT_SERVER and _DEFAULT_SERVER[0] is server:
        _DEFAULT_SERVER.clear()


def enter(ctx: ModelContext) -> contextvars.Token:
    return _CURRENT.set(ctx)


def leave(token: contextvars.Token) -> None:
    _CURRENT.reset(token)


def current() -> ModelContext | None:
    return _CURRENT.get()


def server_or_raise(what: str) -> Any:
    ctx = _CURRENT.get()
    if ctx is not None:
        return ctx.server
    if _DEFAULT_SERVER:
        return _DEFAULT_SERVER[0]
    raise TritonModelException(f"{what} is only available inside a model served by llmserve")


def require_execute(what: str) -> ModelContext:
    ctx = _CURRENT.get()
    if ctx is None or not ctx.in_execute:
        raise TritonModelException(f"{what} can only be called inside the execute function")
    return ctx
