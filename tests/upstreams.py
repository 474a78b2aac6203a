"""Small real upstreams for the tests: gated event streams, echo, and fixed responses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import zlib
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from helpers import Gate, Handler, raw_server, read_head, running_app, running_proxy

ENDINGS = {"LF": "\n", "CRLF": "\r\n", "CR": "\r"}
CONTENT_TYPES = {"sse": "text/event-stream", "ndjson": "application/x-ndjson"}
SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    """``data`` as one chunk of a chunked body, for raw upstreams."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def frames_for(kind: str, ending: str, count: int = 3) -> list[bytes]:
    eol = ENDINGS[ending]
    if kind == "sse":
        return [f"id: {i}{eol}data: token {i}{eol}{eol}".encode() for i in range(count)]
    return [(json.dumps({"i": i, "token": f"t{i}"}) + eol).encode() for i in range(count)]


def gated_stream_app(gate: Gate, content_type: str, encoding: str = "identity",
                     seen: list[dict[str, str]] | None = None) -> web.Application:
    """Writes whatever the test releases through ``gate``, one write each, until it releases None."""

    async def stream(request: web.Request) -> web.StreamResponse:
        if seen is not None:
            seen.append(dict(request.headers))
        headers = {"Content-Type": content_type}
        compressor = None
        if encoding == "gzip":
            headers["Content-Encoding"] = "gzip"
            compressor = zlib.compressobj(wbits=31)
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        while (data := await gate.next()) is not None:
            if data == b"ABORT" and request.transport is not None:
                request.transport.abort()  # a reset mid-stream
                return response
            if compressor is not None:
                data = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
            await response.write(data)
        if compressor is not None:
            await response.write(compressor.flush())
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", stream)
    return app


def echo_app(seen: list[dict[str, Any]] | None = None) -> web.Application:
    """Answers with JSON describing the request it got: method, path, query, headers, body size."""

    async def echo(request: web.Request) -> web.Response:
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
        info = {"method": request.method, "path": request.raw_path.partition("?")[0],
                "query": request.raw_path.partition("?")[2], "headers": dict(request.headers), "body_size": size,
                "header_list": [[k, v] for k, v in request.headers.items()],
                "host": request.headers.get("Host")}
        if seen is not None:
            seen.append(info)
        return web.json_response(info, headers={"X-Upstream": "echo"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


@contextlib.asynccontextmanager
async def gated_proxy(content_type: str = "text/event-stream", encoding: str = "identity",
                      **route: Any) -> AsyncIterator[tuple[Gate, str]]:
    """A gated stream upstream behind a running proxy with one route (``route`` adds its keys);
    yields the gate and the proxy's base URL."""
    gate = Gate()
    async with running_app(gated_stream_app(gate, content_type, encoding)) as upstream, \
            running_proxy({"routes": [{"upstream": upstream, **route}]}) as (proxy, _):
        yield gate, proxy


def answers(response: bytes) -> Handler:
    """A raw upstream (for ``raw_server``) that reads a request head, writes ``response`` byte for
    byte, and closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(response)
        await writer.drain()

    return handle


@contextlib.asynccontextmanager
async def raw_proxy(handle: Handler, **route: Any) -> AsyncIterator[str]:
    """A raw-socket upstream (``raw_server``) behind a running proxy with one route (``route`` adds
    its keys); yields the proxy's base URL."""
    async with raw_server(handle) as upstream, \
            running_proxy({"routes": [{"upstream": upstream, **route}]}) as (proxy, _):
        yield proxy
