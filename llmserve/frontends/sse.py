"""The SSE response of generate_stream and of the OpenAI streams: sse-starlette's, less its
per-event cancel scope when no send timeout is set.

sse-starlette wraps every event's send in `anyio.move_on_after(send_timeout)`, a cancel
scope entered and left per event even when the timeout is None (no timeout at all); on
the streamed path that was about a fifth of the event loop's time per token at 32
streams (docs/BENCHMARKS.md, session 7). With send_timeout None the event goes straight
to `send`, as the scope would have let it; with a timeout, sse-starlette's own send runs.
"""

from __future__ import annotations

from sse_starlette.sse import EventSourceResponse


class EventStream(EventSourceResponse):
    async def _send_with_timeout(self, send, message) -> None:  # type: ignore[override]
        if self.send_timeout is not None:
            await super()._send_with_timeout(send, message)
            return
        try:
            await send(message)
        except BaseException:
            self._send_interrupted = True  # as sse-starlette marks an interrupted send
            raise
