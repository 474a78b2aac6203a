"""Test helpers: real servers on 127.0.0.1, a proxy started from a config dict, and a raw HTTP/1.1
client that sees each chunk the proxy writes (one chunk per ``write()``), so tests can check frame
boundaries and truncated transfers byte for byte."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from sseproxy.accesslog import AccessLog
from sseproxy.config import Config
from sseproxy.errors import ConfigError
from sseproxy.loader import load
from sseproxy.runtime import Runtime, compile_config
from sseproxy.server import Listener

WAIT = 5.0  # bound on every wait for something that should happen
OPEN_CONNECTIONS: list[asyncio.StreamWriter] = []  # closed after each test by conftest
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]  # a raw upstream's connection


def load_text(directory: Path, text: str, suffix: str = ".yaml") -> Config | list[str]:
    """``text`` loaded as a config file (``suffix`` names its format) from ``directory``: the Config,
    or its problems as "loc: message" lines."""
    path = directory / f"c{suffix}"
    path.write_text(text)
    try:
        return load(path, env={})
    except ConfigError as e:
        return [f"{p.loc}: {p.message}" for p in e.problems]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def running_app(app: web.Application, **kwargs: Any) -> AsyncIterator[str]:
    """An aiohttp upstream on 127.0.0.1; yields its base URL."""
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, **kwargs)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def raw_server(handle: Handler) -> AsyncIterator[str]:
    """An upstream written on raw asyncio sockets, for byte-level misbehaviour; yields its base URL."""
    tasks: set[asyncio.Task[None]] = set()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            tasks.discard(task)

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (RST) instead of a FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@contextlib.asynccontextmanager
async def running_listener(config: dict[str, Any]) -> AsyncIterator[tuple[str, Listener]]:
    """The proxy, in this process, listening on a real port; yields its base URL and listener."""
    settings = {"listen": "127.0.0.1:0", "shutdown_grace": 0.5, **config}
    runtime = Runtime(compile_config(Config.model_validate(settings)))
    listener = Listener(runtime, AccessLog())
    host, port = await listener.start("127.0.0.1", 0)
    try:
        yield f"http://{host}:{port}", listener
    finally:
        await listener.stop()


@contextlib.asynccontextmanager
async def running_proxy(config: dict[str, Any]) -> AsyncIterator[tuple[str, Runtime]]:
    """The proxy, in this process, listening on a real port; yields its base URL and runtime."""
    async with running_listener(config) as (url, listener):
        yield url, listener.runtime


class Truncated(Exception):
    """The connection closed before the final chunk: a truncated transfer."""


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    chunks: list[bytes] = field(default_factory=list)
    pending: bytearray = field(default_factory=bytearray)  # read by next_event, not yet returned

    @property
    def chunked(self) -> bool:
        return self.headers.get("transfer-encoding", "").lower() == "chunked"

    async def next_chunk(self, timeout: float = WAIT) -> bytes | None:
        """The next chunk as the proxy wrote it; ``None`` after the final chunk."""
        return await asyncio.wait_for(self._chunk(), timeout)

    async def next_event(self, timeout: float = WAIT) -> bytes:
        """The next whole event (LF endings, up to its blank line), however the proxy's writes cut
        the stream into chunks (one write may carry several events)."""
        while (end := self.pending.find(b"\n\n")) < 0:
            chunk = await self.next_chunk(timeout)
            if chunk is None:
                raise AssertionError(f"the stream ended inside or before an event: {bytes(self.pending)!r}")
            self.pending += chunk
        event = bytes(self.pending[:end + 2])
        del self.pending[:end + 2]
        return event

    async def _chunk(self) -> bytes | None:
        try:
            size_line = await self.reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            data = await self.reader.readexactly(size + 2)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError) as e:
            raise Truncated(str(e)) from None
        if size == 0:
            return None
        self.chunks.append(data[:-2])
        return data[:-2]

    async def body(self, timeout: float = WAIT) -> bytes:
        if self.chunked:
            out = b""
            while (chunk := await self.next_chunk(timeout)) is not None:
                out += chunk
            return out
        length = int(self.headers.get("content-length", "0"))
        return await asyncio.wait_for(self.reader.readexactly(length), timeout)

    async def closed(self, timeout: float = WAIT) -> bool:
        """True once the peer has closed the connection (waits at most ``timeout``)."""
        with contextlib.suppress(ConnectionError):
            rest = await asyncio.wait_for(self.reader.read(), timeout)
            return rest == b"" or self.reader.at_eof()
        return True

    def close(self) -> None:
        self.writer.close()


async def raw_request(base: str, method: str, target: str, headers: dict[str, str] | None = None,
                      body: bytes = b"", head_only: bool = False) -> RawResponse:
    """Send one request as raw bytes, exactly as given, and read the response head."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    OPEN_CONNECTIONS.append(writer)
    all_headers = {"Host": f"{host}:{port}", **(headers or {})}
    if body and "Content-Length" not in all_headers and "Transfer-Encoding" not in all_headers:
        all_headers["Content-Length"] = str(len(body))
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in all_headers.items())
    writer.write(head.encode("latin-1") + b"\r\n" + body)
    await writer.drain()
    raw = await read_head(reader)
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    parsed: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            key = name.strip().lower()
            parsed[key] = f"{parsed[key]}, {value.strip()}" if key in parsed else value.strip()
    return RawResponse(status, parsed, reader, writer)


async def released_stream(request: web.BaseRequest, gate: Gate, headers: dict[str, str] | None = None
                          ) -> web.StreamResponse:
    """An upstream's event stream (``headers`` added to its head) that writes what the test releases
    through ``gate``, as ``write_released`` does."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", **(headers or {})})
    await response.prepare(request)
    await write_released(request, response, gate)
    return response


async def write_released(request: web.BaseRequest, response: web.StreamResponse, gate: Gate) -> None:
    """Write what the test releases through ``gate``, one write each, until it releases None (then
    end the body) or b"ABORT" (then reset the connection mid-stream)."""
    while (data := await gate.next()) is not None:
        if data == b"ABORT" and request.transport is not None:
            request.transport.abort()
            return
        await response.write(data)
    await response.write_eof()


class Gate:
    """Holds an upstream's next event until the test releases it."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    def release(self, data: bytes | None) -> None:
        self._queue.put_nowait(data)

    async def next(self) -> bytes | None:
        return await asyncio.wait_for(self._queue.get(), 30)
