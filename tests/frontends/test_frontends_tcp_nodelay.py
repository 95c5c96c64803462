"""The HTTP listening socket gives accepted connections TCP_NODELAY, so streamed SSE
events are written at once instead of waiting for the client's delayed ACK."""

from __future__ import annotations

import asyncio
import socket

from llmserve.frontends import _bind


def test_accepted_connections_have_tcp_nodelay() -> None:
    async def run() -> int:
        sock = _bind("127.0.0.1", 0)
        accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            conn = writer.get_extra_info("socket")
            accepted.set_result(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_client, sock=sock)
        try:
            port = sock.getsockname()[1]
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            value = await asyncio.wait_for(accepted, 5)
            writer.close()
            return value
        finally:
            server.close()
            await server.wait_closed()

    assert asyncio.run(run()) != 0
