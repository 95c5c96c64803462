"""Open-loop load generator for the overload test, run as its own process so that its
work does not share the server's interpreter lock. Bare HTTP/1.1 keep-alive connections:
httpx's pool took seconds per request at 80 concurrent requests on 2 cores, which would
measure the client, not the server.

    python overload_client.py HOST PORT RATE COUNT CONNECTIONS PATH BODY [PATH BODY ...]
sends COUNT requests, RATE per second, cycling through the (PATH, BODY) pairs, and prints
one JSON list of [path, status, seconds, body] per request."""

from __future__ import annotations

import asyncio
import json
import sys
import time


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    async def post(self, host: str, path: str, body: bytes) -> tuple[int, bytes]:
        head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        payload = await self.reader.readexactly(length)
        return int(status_line.split()[1]), payload


async def run(host: str, port: int, rate: float, count: int, connections: int,
              requests: list[tuple[str, bytes]]) -> list:
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(Connection(*await asyncio.open_connection(host, port)))

    async def one(path: str, body: bytes) -> list:
        conn = await pool.get()
        start = time.perf_counter()
        status, payload = await conn.post(host, path, body)
        elapsed = time.perf_counter() - start
        pool.put_nowait(conn)
        return [path, status, elapsed, json.loads(payload)]

    tasks = []
    begin = time.perf_counter()
    for i in range(count):
        delay = begin + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(*requests[i % len(requests)])))
    return await asyncio.gather(*tasks)


def main() -> None:
    host, port, rate, count, connections, *pairs = sys.argv[1:]
    requests = [(pairs[i], pairs[i + 1].encode()) for i in range(0, len(pairs), 2)]
    results = asyncio.run(run(host, int(port), float(rate), int(count), int(connections),
                              requests))
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
