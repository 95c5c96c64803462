"""The server's asyncio loop and uvicorn's HTTP parser: uvloop and httptools when they
are installed (the serving default, as vLLM and `uvicorn[standard]` run), else the
standard library's loop and h11.

Both sit under every streamed token: each SSE event is a socket write and a loop
wake-up from the threads that deliver responses. In A/B runs through the ensemble at
8 streams (docs/BENCHMARKS.md) they took about a tenth off the server's CPU per token.
LLMSERVE_EVENT_LOOP=asyncio and LLMSERVE_HTTP=h11 choose the plain ones.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)

LOOP_ENV = "LLMSERVE_EVENT_LOOP"
HTTP_ENV = "LLMSERVE_HTTP"
_LOOPS = ("auto", "uvloop", "asyncio")
_HTTP = ("auto", "httptools", "h11")


def _choice(env: str, allowed: tuple[str, ...]) -> str:
    value = os.environ.get(env, "auto").strip().lower() or "auto"
    if value not in allowed:
        log.warning("%s=%r is not one of %s; using auto", env, value, ", ".join(allowed))
        return "auto"
    return value


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory, or None for asyncio's default loop."""
    choice = _choice(LOOP_ENV, _LOOPS)
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            log.warning("%s=uvloop but uvloop is not installed: asyncio's loop serves", LOOP_ENV)
        return None
    return uvloop.new_event_loop


def http_implementation() -> str:
    """uvicorn's `http` setting: httptools when installed, else h11."""
    choice = _choice(HTTP_ENV, _HTTP)
    if choice == "h11":
        return "h11"
    if importlib.util.find_spec("httptools") is not None:
        return "httptools"
    if choice == "httptools":
        log.warning("%s=httptools but httptools is not installed: h11 serves", HTTP_ENV)
    return "h11"


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on the chosen loop (asyncio's own before Python 3.11, which has no
    asyncio.Runner to give a loop factory to)."""
    factory = loop_factory()
    if factory is None or sys.version_info < (3, 11):
        log.info("event loop: asyncio")
        return asyncio.run(main)
    log.info("event loop: uvloop")
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
