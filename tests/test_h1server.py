"""The lean server protocol (sseproxy/h1server.py): what it does that aiohttp's server did for it,
and what it adds. Real sockets on 127.0.0.1, raw bytes where the framing matters."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

from helpers import WAIT, Gate, RawResponse, raw_request, read_head, running_app, running_listener
from upstreams import echo_app, gated_stream_app

from sseproxy.h1server import LeanProtocol


@contextlib.asynccontextmanager
async def stream_and_echo(gate: Gate) -> AsyncIterator[str]:
    """The proxy with ``/sse`` to a gated event stream and everything else to an echo; its base URL."""
    async with running_app(gated_stream_app(gate, "text/event-stream")) as stream_up, \
            running_app(echo_app()) as echo_up, \
            running_listener({"routes": [{"path": "/sse", "upstream": stream_up},
                                         {"path": "/", "upstream": echo_up}]}) as (base, _):
        yield base


async def connect(base: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


async def response_after(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> RawResponse:
    raw = await read_head(reader)
    lines = raw.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    return RawResponse(int(lines[0].split(" ")[1]), headers, reader, writer)


async def test_pipelined_requests_are_answered_in_order_the_second_after_the_first_stream_ends() -> None:
    gate = Gate()
    async with stream_and_echo(gate) as base:
        reader, writer = await connect(base)
        try:
            writer.write(b"GET /sse HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                         b"GET /two HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # one write: two requests
            first = await response_after(reader, writer)
            gate.release(b"data: 1\n\n")
            assert await first.next_chunk() == b"data: 1\n\n"  # the stream runs; the second request waits
            gate.release(None)
            assert await first.next_chunk() is None
            second = await response_after(reader, writer)
            assert json.loads(await second.body())["path"] == "/two"
        finally:
            writer.close()


async def test_an_upgrade_pipelined_behind_another_request_is_refused_and_the_proxy_keeps_serving() -> None:
    async with running_app(echo_app()) as up, \
            running_listener({"routes": [{"upstream": up, "websocket": True}]}) as (base, _):
        reader, writer = await connect(base)
        try:
            writer.write(b"GET /one HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                         b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                         b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
            rest = await asyncio.wait_for(reader.read(), WAIT)  # the first answered, then 400, then closed
        finally:
            writer.close()
        first, _, refused = rest.partition(b"HTTP/1.1 400 ")
        assert first.startswith(b"HTTP/1.1 200 ") and b'"/one"' in first
        assert b'"bad_request"' in refused
        ok = await raw_request(base, "GET", "/after", {})
        assert json.loads(await ok.body())["path"] == "/after"
        ok.close()


async def test_a_head_trickled_past_max_header_size_gets_431_without_being_kept_whole() -> None:
    async with running_app(echo_app()) as up, \
            running_listener({"routes": [{"upstream": up}], "max_header_size": "4KiB"}) as (base, _):
        reader, writer = await connect(base)
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            for i in range(21):  # 21 writes of 200 bytes: the last one crosses the 4 KiB cap, and nothing
                writer.write(b"X-Pad-%02d: %s\r\n" % (i, b"a" * 188))  # follows it, so the proxy read all
                await writer.drain()                                   # it was sent when it answers
            answer = await asyncio.wait_for(reader.read(), WAIT)
        finally:
            writer.close()
        assert answer.startswith(b"HTTP/1.1 431"), answer[:80]
        ok = await raw_request(base, "GET", "/fine", {})
        assert ok.status == 200
        ok.close()


async def test_a_body_the_handler_never_read_closes_the_connection_after_the_answer() -> None:
    async with running_app(echo_app()) as up, \
            running_listener({"routes": [{"upstream": up}], "max_body": "10B"}) as (base, _):
        response = await raw_request(base, "POST", "/big", {"Content-Length": "100"}, body=b"x" * 20)  # 80 to come
        assert response.status == 413
        await response.body()
        assert await response.closed()  # never read as the next request's head


async def test_no_request_parser_is_kept_while_a_stream_runs() -> None:
    gate = Gate()
    async with running_app(gated_stream_app(gate, "text/event-stream")) as up, \
            running_listener({"routes": [{"upstream": up}]}) as (base, listener):
        streams = [await raw_request(base, "GET", "/sse", {}) for _ in range(3)]
        try:
            for _ in streams:
                gate.release(b"data: x\n\n")
            for stream in streams:
                assert await stream.next_chunk() == b"data: x\n\n"
            connections = list(listener.server.connections)
            assert len(connections) == 3 and all(isinstance(c, LeanProtocol) for c in connections)
            assert all(c._llhttp is None for c in connections)  # made again for the next request
        finally:
            for stream in streams:
                stream.close()


async def test_a_kept_alive_connection_carries_a_stream_then_a_plain_request() -> None:
    gate = Gate()
    async with stream_and_echo(gate) as base:
        first = await raw_request(base, "GET", "/sse", {})
        gate.release(b"data: 1\n\n")
        gate.release(None)
        assert await first.body() == b"data: 1\n\n"
        first.writer.write(b"POST /next HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\r\nhello")
        second = await response_after(first.reader, first.writer)
        assert json.loads(await second.body())["body_size"] == 5
        first.close()
