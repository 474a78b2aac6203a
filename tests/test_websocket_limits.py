"""WebSocket relays under pressure: the route's timeouts and failover on the handshake, the message and
total memory bounds, and shutdown closing every relay with 1001."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import signal
import socket
import struct
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import WSMsgType
from helpers import WAIT, free_port, raw_request, raw_server, read_head, running_app
from procs import peak_rss_bytes, sseproxy_process
from test_websocket import HANDSHAKE, open_ws, wait_for, ws_upstream

from sseproxy.accesslog import AccessLog
from sseproxy.config import Config
from sseproxy.runtime import Runtime, compile_config
from sseproxy.server import Listener
from sseproxy.websocket import WebSocketRelays


@contextlib.contextmanager
def unanswered_port() -> Iterator[int]:
    """A port on 127.0.0.1 whose listen backlog is full and never accepted from: a connect to it gets
    no SYN-ACK, like an upstream that drops packets, so only a connect timeout ends the attempt."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        for _ in range(16):  # bounded: the kernel queues backlog + 1 connections
            filler = socket.socket()
            filler.setblocking(False)
            fillers.append(filler)
            if filler.connect_ex(("127.0.0.1", port)) not in (0, 115):  # 115: EINPROGRESS
                break
            probe = socket.socket()
            probe.settimeout(0.2)
            try:
                probe.connect(("127.0.0.1", port))
            except TimeoutError:
                break  # the backlog is full: this connect got no answer
            finally:
                probe.close()
        else:
            raise AssertionError("could not fill the listen backlog")
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


async def silent_after_accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_head(reader)
    await asyncio.sleep(60)  # accepts and reads the handshake, never answers


def accept_key(key: str) -> bytes:
    """The Sec-WebSocket-Accept answering ``key`` (RFC 6455 section 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode() + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())


@contextlib.asynccontextmanager
async def proxy_with_relays(config: dict[str, Any]) -> AsyncIterator[tuple[str, WebSocketRelays]]:
    """Like ``helpers.running_proxy``, yielding the registry of open WebSocket relays."""
    runtime = Runtime(compile_config(Config.model_validate({"listen": "127.0.0.1:0", "shutdown_grace": 0.5,
                                                             **config})))
    listener = Listener(runtime, AccessLog())
    host, port = await listener.start("127.0.0.1", 0)
    try:
        yield f"http://{host}:{port}", listener.handler.websockets
    finally:
        await listener.stop()


async def test_a_handshake_the_upstream_never_answers_is_504_after_idle() -> None:
    loop = asyncio.get_running_loop()
    async with raw_server(silent_after_accept) as up, proxy_with_relays({"routes": [
            {"upstream": up, "timeouts": {"connect": "1s", "idle": "600ms"}}]}) as (proxy, _):
        started = loop.time()
        resp = await raw_request(proxy, "GET", "/hmr", HANDSHAKE)
        elapsed = loop.time() - started
        assert resp.status == 504
        assert json.loads(await resp.body())["error"]["type"] == "upstream_timeout"
    assert 0.5 < elapsed < 2.5  # like a plain GET on the route: after idle, not never


async def test_connecting_is_bounded_by_the_connect_timeout_then_the_next_upstream_is_tried() -> None:
    events: list[Any] = []
    loop = asyncio.get_running_loop()
    with unanswered_port() as dead:
        async with running_app(ws_upstream(events)) as up, proxy_with_relays({"routes": [
                {"upstream": [f"http://127.0.0.1:{dead}", up], "timeouts": {"connect": "400ms", "idle": "5s"}}]}
                ) as (proxy, _), aiohttp.ClientSession() as session:
            started = loop.time()
            ws = await open_ws(session, f"{proxy}/")  # the first upstream in turn is the unanswered one
            elapsed = loop.time() - started
            await ws.send_str("hi")
            assert (await ws.receive(WAIT)).data == "echo:hi"
            await ws.close()
    assert 0.3 < elapsed < 2.0  # one connect timeout, not the kernel's SYN retries


async def test_a_refused_connection_fails_over_to_the_next_upstream() -> None:
    events: list[Any] = []
    async with running_app(ws_upstream(events)) as up, proxy_with_relays({"routes": [
            {"upstream": [f"http://127.0.0.1:{free_port()}", up]}]}) as (proxy, _), \
            aiohttp.ClientSession() as session:
        for _ in range(2):  # round robin starts once on each upstream: both reach the live one
            ws = await open_ws(session, f"{proxy}/")
            await ws.send_str("hi")
            assert (await ws.receive(WAIT)).data == "echo:hi"
            await ws.close()
    assert [e[0] for e in events].count("open") == 2


async def test_a_message_over_max_message_closes_both_sides_with_1009() -> None:
    events: list[Any] = []
    async with running_app(ws_upstream(events)) as up, proxy_with_relays({"routes": [{"upstream": up}]}) as (
            proxy, relays), aiohttp.ClientSession() as session:
        ws = await open_ws(session, f"{proxy}/")
        await ws.send_bytes(b"x" * (1024 * 1024))  # exactly the default max_message: relayed
        assert len((await ws.receive(WAIT)).data) == 1024 * 1024
        await ws.send_bytes(b"x" * (1024 * 1024 + 1))
        msg = await ws.receive(WAIT)
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1009)
        assert await wait_for(events, lambda e: e[0] == "closed") == ("closed", 1009)  # the upstream too
        other = await open_ws(session, f"{proxy}/")  # the proxy keeps serving
        await other.send_str("still")
        assert (await other.receive(WAIT)).data == "echo:still"
        await other.close()
        await until(lambda: len(relays) == 0)
        assert relays.held == 0


async def test_max_total_bounds_the_messages_held_across_connections() -> None:
    """Two connections to an upstream that reads nothing: once one holds a message waiting for the
    upstream, a message on the other would take the total over max_total, and closes it with 1013."""
    stop = asyncio.Event()

    async def never_reads(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await read_head(reader)).decode()
        key = next(line.split(":", 1)[1].strip() for line in head.split("\r\n")
                   if line.lower().startswith("sec-websocket-key:"))
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept_key(key) + b"\r\n\r\n")
        await writer.drain()
        await stop.wait()  # then never reads a frame: the proxy's writes to it back up

    settings = {"websocket": {"max_message": "96KiB", "max_total": "128KiB"}}
    async with raw_server(never_reads) as up, proxy_with_relays({**settings, "routes": [{"upstream": up}]}) as (
            proxy, relays), aiohttp.ClientSession() as session:
        first = await open_ws(session, f"{proxy}/")
        message = b"m" * (90 * 1024)

        async def fill() -> None:
            with contextlib.suppress(ConnectionError):
                while True:  # ends blocked: every buffer toward the upstream is full
                    await first.send_bytes(message)

        filling = asyncio.create_task(fill())
        try:
            await until(lambda: relays.held > 0)  # the first relay holds a message it cannot hand on
            assert relays.held == len(message)
            second = await open_ws(session, f"{proxy}/")
            await second.send_bytes(message)
            msg = await second.receive(WAIT)
            assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1013)
            await until(lambda: len(relays) == 1)
            assert relays.held == len(message)  # the first one carries on
        finally:
            filling.cancel()
            stop.set()  # the upstream hangs up: the first relay ends too, and lets go of its message
        msg = await first.receive(WAIT)
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1011)
        await until(lambda: len(relays) == 0)
        assert relays.held == 0


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(100):  # bounded: 5 s at most
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the condition did not become true within 5 s")


async def test_huge_frames_are_refused_from_their_header_without_buffering() -> None:
    """Four clients each start a 32 MiB frame: the proxy reads each frame's header, closes with 1009,
    and never holds the payload (before the cap, it buffered every one whole)."""
    events: list[Any] = []
    size = 32 * 1024 * 1024
    chunk = bytes(1024 * 1024)
    async with running_app(ws_upstream(events)) as up, sseproxy_process(
            "serve", "--listen", "127.0.0.1:0", "--route", f"/={up}") as (proc, url):
        async with aiohttp.ClientSession() as session:  # warm up: one relay through the process
            ws = await open_ws(session, f"{url}/")
            await ws.send_str("warm")
            assert (await ws.receive(WAIT)).data == "echo:warm"
            await ws.close()
        before = peak_rss_bytes(proc.pid)

        async def send_huge() -> bytes:
            resp = await raw_request(url, "GET", "/", HANDSHAKE)
            assert resp.status == 101
            # a masked binary frame (mask 0: the payload goes as is) declaring 32 MiB
            resp.writer.write(b"\x82\xff" + struct.pack("!Q", size) + b"\0\0\0\0")
            try:
                for _ in range(size // len(chunk)):
                    resp.writer.write(chunk)
                    await resp.writer.drain()
                return await asyncio.wait_for(resp.reader.read(4), WAIT)
            except ConnectionError:  # the proxy closed with our payload unread: the kernel resets
                return b"reset"

        answers = await asyncio.gather(*(send_huge() for _ in range(4)))
        rise = peak_rss_bytes(proc.pid) - before
        async with aiohttp.ClientSession() as session:  # the proxy keeps serving
            ws = await open_ws(session, f"{url}/")
            await ws.send_str("after")
            assert (await ws.receive(WAIT)).data == "echo:after"
            await ws.close()
    assert set(answers) <= {b"\x88\x02" + struct.pack("!H", 1009), b"reset"}  # close 1009, or reset after it
    assert rise < 24 * 1024 * 1024, f"the proxy's peak memory rose by {rise / 2**20:.0f} MiB"


async def test_sigterm_closes_open_websockets_with_1001_and_exits_0(tmp_path: Path) -> None:
    events: list[Any] = []
    config = tmp_path / "ws.yaml"
    async with running_app(ws_upstream(events)) as up:
        config.write_text(f"shutdown_grace: 1s\nroutes:\n  - {{upstream: '{up}'}}\n")
        async with sseproxy_process("serve", "--config", str(config), "--listen", "127.0.0.1:0") as (proc, url), \
                aiohttp.ClientSession() as session:
            ws = await open_ws(session, f"{url}/hmr")
            await ws.send_str("hi")
            assert (await ws.receive(WAIT)).data == "echo:hi"
            loop = asyncio.get_running_loop()
            started = loop.time()
            proc.send_signal(signal.SIGTERM)
            msg = await ws.receive(WAIT)
            assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1001)
            assert await asyncio.wait_for(proc.wait(), WAIT) == 0
            assert loop.time() - started < 1.0 + 1.5  # shutdown_grace and a little
            assert proc.stderr is not None
            log = (await proc.stderr.read()).decode()
        assert await wait_for(events, lambda e: e[0] == "closed") == ("closed", 1001)  # the upstream too
    lines = [line for line in log.splitlines() if "sseproxy.access" in line]
    assert len(lines) == 1 and "status=101" in lines[0] and "outcome=shutdown" in lines[0], lines
