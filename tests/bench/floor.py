"""The floor: the least a Python relay on uvloop can do per stream, as a bench reference (target
``floor``). Each client connection gets its own upstream connection; bytes go from one protocol's
``data_received`` straight to the other's ``transport.write``, in both directions, parsing nothing:
no HTTP, no framing, no hooks, no pooling, one request per connection.

It is not a proxy anyone should run. It shows what the interpreter and the loop cost on this machine,
so sseproxy's figures can be read against what any Python proxy would pay, not only against nginx.

    python tests/bench/floor.py LISTEN_PORT UPSTREAM_PORT
"""

from __future__ import annotations

import asyncio
import sys

import uvloop


class Upstream(asyncio.Protocol):
    def __init__(self, client: asyncio.Transport):
        self.client = client

    def data_received(self, data: bytes) -> None:
        self.client.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()


class Client(asyncio.Protocol):
    """Holds what the client sends until its request head is whole, then connects and forwards."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.transport: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self.held = b""
        self.connecting = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio's classes

    def data_received(self, data: bytes) -> None:
        if self.upstream is not None:
            self.upstream.write(data)
            return
        self.held += data
        if not self.connecting and b"\r\n\r\n" in self.held:
            self.connecting = True
            asyncio.get_running_loop().create_task(self.connect())

    async def connect(self) -> None:
        assert self.transport is not None
        client = self.transport
        try:
            upstream, _ = await asyncio.get_running_loop().create_connection(
                lambda: Upstream(client), "127.0.0.1", self.upstream_port)
        except OSError:
            client.close()
            return
        if client.is_closing():
            upstream.close()
            return
        self.upstream = upstream
        upstream.write(self.held)
        self.held = b""

    def pause_writing(self) -> None:  # the client lags: stop reading the upstream (bounded memory)
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:
            self.upstream.close()


async def serve(port: int, upstream_port: int) -> None:
    server = await asyncio.get_running_loop().create_server(lambda: Client(upstream_port), "127.0.0.1", port,
                                                            backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1]), int(sys.argv[2])))
