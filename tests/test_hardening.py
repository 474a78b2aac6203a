"""The hardening round (issue 10), each through a running proxy with a raw-socket upstream or
client: responses never cross between clients, one stream never stalls the rest, a reset is never
a clean end, bounded request heads, bad upstream answers are 502s, and the smaller items."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Awaitable, Callable

from aiohttp import web
from backports import zstd
from helpers import WAIT, Gate, raw_request, raw_server, read_head, running_app, running_proxy
from procs import sseproxy_process
from upstreams import gated_stream_app

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def test_an_unsolicited_response_on_an_idle_pooled_connection_never_reaches_the_next_client() -> None:
    """The upstream answers, then writes a second response nobody asked for while the connection
    sits in the pool. The proxy must close that connection (the upstream sees it closed), and every
    later client gets its own answer, never the smuggled one with its cookie."""
    smuggled_sent, first_closed = asyncio.Event(), asyncio.Event()
    connections = 0

    async def rogue(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        mine_is_rogue = connections == 1
        try:
            while True:
                head = await read_head(reader)
                path = head.split(b" ")[1]
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(path), path))
                await writer.drain()
                if mine_is_rogue and not smuggled_sent.is_set():
                    await asyncio.sleep(0.05)  # the proxy has pooled the connection by now
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nSet-Cookie: victim=1\r\n\r\nsmuggled")
                    await writer.drain()
                    smuggled_sent.set()
        except asyncio.IncompleteReadError:
            if mine_is_rogue:
                first_closed.set()
            raise

    async with raw_server(rogue) as up, running_proxy({"routes": [{"upstream": up}]}) as (proxy, _):
        first = await raw_request(proxy, "GET", "/first", {})
        assert await first.body() == b"/first"
        await asyncio.wait_for(smuggled_sent.wait(), WAIT)
        await asyncio.wait_for(first_closed.wait(), WAIT)  # the proxy closed the connection that turned readable
        for i in range(5):  # every later client gets its own response, never the smuggled one
            resp = await raw_request(proxy, "GET", f"/next{i}", {})
            assert await resp.body() == f"/next{i}".encode()
            assert "set-cookie" not in resp.headers


async def test_bytes_left_after_a_response_close_that_upstream_connection() -> None:
    """A response followed, in the same write, by a whole second response: the first is relayed,
    the connection is closed, and the next client gets a fresh connection's answer."""
    connections = 0

    async def extra(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            head = await read_head(reader)
            mine = head.split(b" ")[1]
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(mine), mine)
                         + b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled")
            await writer.drain()

    async with raw_server(extra) as up, running_proxy({"routes": [{"upstream": up}]}) as (proxy, _):
        for i in range(3):
            resp = await raw_request(proxy, "GET", f"/r{i}", {})
            assert resp.status == 200 and await resp.body() == f"/r{i}".encode()
    assert connections == 3


async def test_a_response_that_ends_before_the_request_body_was_sent_closes_the_connection() -> None:
    """The upstream answers before reading the body, then reads on. The proxy must close that
    connection rather than finish sending the body and pool it: what a connection carries after a
    response the upstream did not wait for is not to be trusted (Go does the same)."""
    connections = 0
    later_requests_on_first: list[bytes] = []
    first_done = asyncio.Event()

    async def answers_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        mine = connections
        head = await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        if mine != 1:
            return
        try:
            while data := await reader.read(1 << 16):  # the body, and whatever comes after it
                if b"GET /next" in data:
                    later_requests_on_first.append(data)
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        finally:
            first_done.set()
        del head

    body = b"x" * (8 * 1024 * 1024)
    async with raw_server(answers_first) as up, running_proxy({"routes": [{"upstream": up}]}) as (proxy, _):
        host, port = proxy.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"POST /ignore HTTP/1.1\r\nHost: %s:%s\r\nContent-Length: %d\r\n\r\n"
                     % (host.encode(), port.encode(), len(body)))
        sending = asyncio.create_task(_send_all(writer, body))
        head = await read_head(reader)
        assert head.startswith(b"HTTP/1.1 200")
        await asyncio.wait_for(first_done.wait(), WAIT)  # the proxy closed the first connection
        nxt = await raw_request(proxy, "GET", "/next", {})
        assert nxt.status == 200 and await nxt.body() == b"ok"
        sending.cancel()
        writer.close()
    assert later_requests_on_first == []
    assert connections == 2


async def _send_all(writer: asyncio.StreamWriter, body: bytes) -> None:
    with contextlib.suppress(ConnectionError):
        for i in range(0, len(body), 1 << 20):  # bounded: 8 writes
            writer.write(body[i:i + (1 << 20)])
            await writer.drain()


def zstd_bomb_app(frames: int) -> web.Application:
    """An event stream, zstd-encoded, that expands hugely: one 16 MiB frame of tiny events,
    compressed once (1.5 KB) and sent ``frames`` times (concatenated frames are one valid stream),
    so the whole of it arrives in one read and only decoding takes time."""
    frame = zstd.compress(b"data: x\n\n" * (16 * 1024 * 1024 // 9))

    async def bomb(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Content-Encoding": "zstd"})
        await response.prepare(request)
        await response.write(frame * frames)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/bomb", bomb)
    return app


class FastReader:
    """A client that reads as fast as the kernel delivers: blocking ``recv_into`` on its own thread,
    so the proxy's writes never wait for it (the case where nothing else makes a stream yield)."""

    def __init__(self, base: str, target: str):
        host, port = base.removeprefix("http://").rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=WAIT * 6)
        self.sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        self.received = 0
        self.ended = threading.Event()

    def run(self) -> None:
        buffer = bytearray(4 << 20)
        with contextlib.suppress(OSError):
            while (n := self.sock.recv_into(buffer)) and self.received < 2 << 30:  # bounded: 2 GiB
                self.received += n
                if buffer[:n].endswith(b"\r\n0\r\n\r\n"):  # the final chunk: the whole bomb was relayed
                    break
        self.ended.set()


async def test_a_stream_that_expands_hugely_never_stalls_the_other_streams_or_health() -> None:
    """A fast client reading a 1 GiB decoded stream (100 KB on the wire): while it runs, another
    stream's next event and a health check are both answered; before, the loop was held until the
    whole bomb had been relayed."""
    gate = Gate()
    async with running_app(zstd_bomb_app(64)) as bomb_up, running_app(gated_stream_app(gate, "text/event-stream")
                                                                    ) as calm_up, sseproxy_process(
            "serve", "--listen", "127.0.0.1:0", "--route", f"/bomb={bomb_up}/bomb", "--route", f"/={calm_up}"
    ) as (_proc, url):
        calm = await raw_request(url, "GET", "/calm", {})
        bomb = FastReader(url, "/bomb")
        reading = asyncio.get_running_loop().run_in_executor(None, bomb.run)
        try:
            for _ in range(500):  # bounded: until the bomb is well under way
                if bomb.received > 8 << 20:
                    break
                await asyncio.sleep(0.01)
            gate.release(b"data: still here\n\n")
            assert await calm.next_chunk(WAIT * 4) == b"data: still here\n\n"
            health = await raw_request(url, "GET", "/_sseproxy/health", {})
            assert health.status == 200
            assert not bomb.ended.is_set(), f"the bomb ended first ({bomb.received >> 20} MiB): nothing ran beside it"
        finally:
            bomb.sock.shutdown(socket.SHUT_RDWR)
            await reading
            bomb.sock.close()
            gate.release(None)
