"""The hardening round (issue 10), each through a running proxy with a raw-socket upstream or
client: responses never cross between clients, one stream never stalls the rest, a reset is never
a clean end, bounded request heads, bad upstream answers are 502s, and the smaller items."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from helpers import WAIT, raw_request, raw_server, read_head, running_proxy

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
