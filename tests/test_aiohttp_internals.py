"""One test per hook in sseproxy/aiohttp_internals.py: each fails loudly when an aiohttp release
changes what sseproxy relies on beneath aiohttp's public API.

Every test runs against real servers on 127.0.0.1: a hook is only proven by aiohttp calling it.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.client_proto import ResponseHandler
from aiohttp.web_protocol import RequestHandler
from helpers import WAIT, Gate, raw_server, read_head, running_app, running_proxy
from upstreams import chunk, echo_app, gated_stream_app

from sseproxy.aiohttp_internals import (
    HeldHeadResponse,
    PreparableRequest,
    ProxyProtocol,
    ProxyServer,
    ServerProtocol,
    fail_body_when_connection_drops,
    mark_ended,
    prepare_now,
    stop_read_timeout,
    take_head,
)


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded) for a condition that a protocol callback makes true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def ok(request: web.BaseRequest) -> web.StreamResponse:
    return web.Response(text="ok")


# -- web.Server: _loop, _kwargs, and the RequestHandler subclass -------------------------------

async def test_web_server_has_loop_and_kwargs_and_proxy_server_builds_a_head_deadline_protocol() -> None:
    server = ProxyServer(ok, header_timeout=2.5, max_head=32768, on_refused=print, max_headers=77)
    assert server._loop is asyncio.get_running_loop()
    assert isinstance(server._kwargs, dict)
    assert server._kwargs["max_headers"] == 77  # what web.Server would hand to its RequestHandler
    assert server._kwargs["max_field_size"] == 8190  # capped by max_head, never above aiohttp's own
    assert server.handler_cancellation is True
    protocol = server()
    assert type(protocol) is ProxyProtocol and isinstance(protocol, RequestHandler)
    assert protocol._loop is server._loop  # RequestHandler keeps the loop the deadline is armed on
    assert protocol._deadlines.timeout == 2.5
    assert protocol.max_headers == 77  # the kwargs reached RequestHandler.__init__
    assert protocol.access_logger is None   # access_log=None: sseproxy writes its own


class RecordingServer(ProxyServer):
    """ProxyServer that keeps every protocol it builds, so a test can look at its deadline."""

    def __init__(self, header_timeout: float):
        super().__init__(ok, header_timeout=header_timeout, max_head=32768, on_refused=print)
        self.protocols: list[ProxyProtocol] = []

    def __call__(self) -> RequestHandler:
        protocol = super().__call__()
        assert isinstance(protocol, ProxyProtocol)
        self.protocols.append(protocol)
        return protocol


async def serving(server: web.Server) -> AsyncIterator[tuple[str, int]]:
    runner = web.ServerRunner(server, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        address = runner.addresses[0]
        yield str(address[0]), int(address[1])
    finally:
        await runner.cleanup()


@pytest.fixture
async def recording() -> AsyncIterator[tuple[RecordingServer, tuple[str, int]]]:
    server = RecordingServer(header_timeout=30)
    async for address in serving(server):
        yield server, address


async def test_request_handler_subclass_hooks_are_called(recording: tuple[RecordingServer, tuple[str, int]]) -> None:
    server, (host, port) = recording
    reader, writer = await asyncio.open_connection(host, port)
    try:
        await until(lambda: bool(server.protocols), "the server to build a protocol")
        protocol = server.protocols[0]
        await until(lambda: protocol.transport is not None, "connection_made")
        assert protocol._deadline is not None, "connection_made did not arm the head deadline"

        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await read_head(reader)
        assert head.startswith(b"HTTP/1.1 200")
        assert (await asyncio.wait_for(reader.readexactly(2), WAIT)) == b"ok"
        await until(lambda: protocol._deadline is not None, "the deadline re-armed for the next request")
    finally:
        writer.close()
    await until(lambda: protocol.transport is None, "connection_lost")
    assert protocol._deadline is None, "connection_lost did not disarm the head deadline"


async def test_a_silent_connection_is_closed_at_the_head_deadline() -> None:
    async for host, port in serving(ProxyServer(ok, header_timeout=0.2, max_head=32768, on_refused=print)):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(b"GET / HTTP/1.1\r\n")  # half a head, then nothing
            assert await asyncio.wait_for(reader.read(), WAIT) == b""  # closed by the server
        finally:
            writer.close()


# -- the client protocol: closed, read_timeout, _drop_timeout, _read_timeout_handle ------------

async def test_response_handler_closed_read_timeout_and_drop_timeout_on_a_real_response() -> None:
    gate = Gate()
    async with running_app(gated_stream_app(gate, "text/plain")) as url, \
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(sock_read=30)) as session:
        response = await session.get(url)
        assert response.connection is not None
        protocol = response.connection.protocol
        assert isinstance(protocol, ResponseHandler)

        closed = protocol.closed
        assert isinstance(closed, asyncio.Future) and not closed.done()
        assert protocol.closed is closed  # one future for the connection's life: a callback on it stays

        assert protocol.read_timeout == 30
        assert protocol._read_timeout_handle is not None, "no sock_read timer armed while the body is pending"
        assert callable(protocol._drop_timeout)
        stop_read_timeout(response)
        assert protocol.read_timeout is None
        assert protocol._read_timeout_handle is None

        gate.release(b"one")
        assert await asyncio.wait_for(response.content.readany(), WAIT) == b"one"
        assert protocol._read_timeout_handle is None, "data re-armed the read timer after it was stopped"
        gate.release(None)
        assert await asyncio.wait_for(response.read(), WAIT) == b""
        response.close()


@pytest.mark.parametrize("rest", [
    pytest.param(b"", id="FIN-mid-chunked-body"),
    pytest.param(b"zz\r\nnot a chunk\r\n", id="malformed-chunk"),  # aiohttp closes, the reader would wait
])
async def test_fail_body_when_connection_drops_makes_the_read_fail(rest: bytes) -> None:
    first_read = asyncio.Event()

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk(b"one"))
        await writer.drain()
        await asyncio.wait_for(first_read.wait(), WAIT)
        writer.write(rest)
        await writer.drain()
        if not rest:
            return  # raw_server closes: FIN without the final chunk
        await asyncio.wait_for(reader.read(), WAIT)  # held open until the client side closes

    async with raw_server(upstream) as url, aiohttp.ClientSession() as session:
        response = await session.get(url)
        fail_body_when_connection_drops(response)
        assert await asyncio.wait_for(response.content.readany(), WAIT) == b"one"
        first_read.set()
        with pytest.raises(aiohttp.ClientPayloadError):  # the relay catches ClientError, not RuntimeError
            await asyncio.wait_for(response.content.readany(), WAIT)
        response.close()


# -- request.writer and 100 Continue -----------------------------------------------------------

async def test_request_writer_write_is_a_coroutine_method() -> None:
    seen: list[bool] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(inspect.iscoroutinefunction(request.writer.write))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", handler)
    async with running_app(app) as url, aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
    assert seen == [True]


async def send_raw(proxy: str, data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = proxy.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    await writer.drain()
    return reader, writer


async def test_http11_expect_100_continue_gets_the_interim_response_before_the_final_one() -> None:
    seen: list[dict[str, object]] = []
    async with running_app(echo_app(seen)) as upstream, \
            running_proxy({"routes": [{"upstream": upstream}]}) as (proxy, _):
        reader, writer = await send_raw(proxy, b"POST /up HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n"
                                               b"Expect: 100-continue\r\n\r\n")
        try:
            # the body has not been sent: the proxy must answer before it, or the client waits
            assert await read_head(reader) == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(b"hello")
            head = await read_head(reader)
            assert head.startswith(b"HTTP/1.1 200 ")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:")))
            body = json.loads(await asyncio.wait_for(reader.readexactly(length), WAIT))
        finally:
            writer.close()
    assert body["body_size"] == 5
    assert "Expect" not in body["headers"]  # the proxy answered it; the upstream never sees it


async def test_http10_expect_gets_no_interim_response() -> None:
    async with running_app(echo_app()) as upstream, \
            running_proxy({"routes": [{"upstream": upstream}]}) as (proxy, _):
        reader, writer = await send_raw(proxy, b"POST /up HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n"
                                               b"Expect: 100-continue\r\n\r\nhello")
        try:
            answer = await asyncio.wait_for(reader.read(), WAIT)  # HTTP/1.0: closed after the response
        finally:
            writer.close()
    assert answer.split(b" ", 2)[1] == b"200", answer[:100]
    assert b"100 Continue" not in answer
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["body_size"] == 5


# -- StreamResponse._send_headers_immediately and the writer's held head ------------------------

async def chunked_answers(handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                          requests: int) -> list[tuple[bytes, bytes]]:
    """``requests`` GETs pipelined on one connection to an app serving ``handler``: each answer's
    head and its chunked body, read to the last chunk."""
    app = web.Application()
    app.router.add_get("/", handler)
    answers = []
    async with running_app(app) as url:
        reader, writer = await send_raw(url.rstrip("/"), b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * requests)
        try:
            for _ in range(requests):
                head = await read_head(reader)
                answers.append((head, await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), WAIT)))
        finally:
            writer.close()
    return answers


async def test_a_held_head_is_taken_once_and_leaves_with_the_first_body_bytes_in_one_write() -> None:
    taken: list[bytes] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        response = HeldHeadResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        head = take_head(response)  # prepare() held it: nothing went out yet
        taken.extend([head, take_head(response)])
        assert request.transport is not None
        request.transport.write(head + b"5\r\nhello\r\n")  # the head and the first chunk, one write
        await response.write_eof()  # the last chunk only: the head is marked as sent
        return response

    [(head, rest)] = await chunked_answers(handler, 1)
    assert taken[0].startswith(b"HTTP/1.1 200 OK\r\n") and taken[0].endswith(b"\r\n\r\n")
    assert taken[1] == b""  # taken once
    assert b"transfer-encoding: chunked" in head.lower()
    assert rest == b"5\r\nhello\r\n0\r\n\r\n"  # no second head


async def test_a_response_marked_ended_writes_nothing_more_at_its_eof() -> None:
    state: list[bool] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        response = HeldHeadResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        assert request.transport is not None
        request.transport.write(take_head(response) + b"5\r\nhello\r\n0\r\n\r\n")  # the end, written by hand
        mark_ended(response)
        await response.write_eof()  # aiohttp's own end: nothing more on the wire
        state.append(response.prepared)
        return response

    answers = await chunked_answers(handler, 2)  # two on one connection: no stray bytes before the second
    assert [head[:12] for head, _ in answers] == [b"HTTP/1.1 200"] * 2
    assert [body for _, body in answers] == [b"5\r\nhello\r\n0\r\n\r\n"] * 2
    assert state == [True, True]


async def test_a_held_head_is_prepared_without_awaiting_from_a_callback() -> None:
    """prepare_now: prepare() of a held head finishes in one step (nothing written, nothing awaited),
    so the callback where an upstream's head arrives can begin the response; the head is the one
    prepare() makes."""
    heads: list[bytes] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        response = HeldHeadResponse(headers={"Content-Type": "text/event-stream"})
        prepare_now(response, request)  # no await: as from a protocol callback
        assert response.prepared
        head = take_head(response)
        heads.append(head)
        assert request.transport is not None
        request.transport.write(head + b"5\r\nhello\r\n0\r\n\r\n")
        mark_ended(response)
        return response

    [(head, body)] = await chunked_answers(handler, 1)
    assert heads == [head] and head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"transfer-encoding: chunked" in head.lower() and b"content-type: text/event-stream" in head.lower()
    assert body == b"5\r\nhello\r\n0\r\n\r\n"


# -- BaseProtocol, StreamWriter and prepare()'s private reads of the request ---------------------

class _Request(PreparableRequest):
    __slots__ = ("headers", "keep_alive", "method", "version")

    def __init__(self, protocol: ServerProtocol, loop: asyncio.AbstractEventLoop):
        super().__init__(protocol, loop)
        self.method, self.version, self.keep_alive = "GET", aiohttp.HttpVersion11, True
        self.headers: dict[str, str] = {}


class _Answering(ServerProtocol):
    """Answers the first bytes it reads with a chunked StreamResponse, prepared on a _Request."""

    __slots__ = ("done",)

    def __init__(self, loop: asyncio.AbstractEventLoop, done: list[asyncio.Task[None]]):
        super().__init__(loop)
        self.done = done

    def data_received(self, data: bytes) -> None:
        self.done.append(self._loop.create_task(self._answer()))

    async def _answer(self) -> None:
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        request = _Request(self, self._loop)
        await response.prepare(request)  # type: ignore[arg-type]
        await response.write(b"hello")
        await request._payload_writer.drain()  # BaseProtocol's _drain_helper: at once while not paused
        await response.write_eof()


async def test_stream_response_prepares_on_a_preparable_request_over_a_base_protocol() -> None:
    loop = asyncio.get_running_loop()
    done: list[asyncio.Task[None]] = []
    server = await loop.create_server(lambda: _Answering(loop, done), "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET / HTTP/1.1\r\n\r\n")
            head = await read_head(reader)
            body = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), WAIT)
        finally:
            writer.close()
        await asyncio.wait_for(done[0], WAIT)
    finally:
        server.close()
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"transfer-encoding: chunked" in head.lower()
    assert body == b"5\r\nhello\r\n0\r\n\r\n"
