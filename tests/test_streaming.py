"""Streaming through a running proxy, proven with gates: the upstream's next event is held until
the client has the previous one, and each chunk the proxy writes is exactly one whole frame."""

from __future__ import annotations

import asyncio
import zlib

import pytest
from helpers import WAIT, Gate, raw_request, read_head, running_app, running_proxy
from upstreams import CONTENT_TYPES, ENDINGS, SSE_HEAD, chunk, frames_for, gated_proxy, gated_stream_app, raw_proxy


@pytest.mark.parametrize("ending", list(ENDINGS))
@pytest.mark.parametrize("encoding", ["identity", "gzip"])
@pytest.mark.parametrize("kind", list(CONTENT_TYPES))
async def test_each_frame_arrives_whole_before_the_next_is_sent(kind: str, encoding: str, ending: str) -> None:
    async with gated_proxy(CONTENT_TYPES[kind], encoding) as (gate, proxy):
        resp = await raw_request(proxy, "GET", "/stream", {"Accept-Encoding": "gzip, br"})
        assert resp.status == 200
        assert resp.chunked
        assert "content-encoding" not in resp.headers  # decoded as it arrived, never compressed to the client
        assert "content-length" not in resp.headers
        assert "no-cache" in resp.headers["cache-control"] and "no-transform" in resp.headers["cache-control"]
        assert resp.headers["x-accel-buffering"] == "no"
        for frame in frames_for(kind, ending):
            gate.release(frame[:7])  # half a frame: the proxy must hold it ...
            gate.release(frame[7:])  # ... until its end arrives, then write it whole
            assert await resp.next_chunk() == frame
        gate.release(None)
        assert await resp.next_chunk() is None  # the upstream ended cleanly, so does the client's stream
        resp.close()


async def test_stream_always_relays_each_piece_of_any_content_type() -> None:
    async with gated_proxy("text/plain", stream="always") as (gate, proxy):
        resp = await raw_request(proxy, "GET", "/", {})
        assert resp.headers["x-accel-buffering"] == "no"
        for piece in (b"no ", b"framing ", b"here"):
            gate.release(piece)
            assert await resp.next_chunk() == piece
        gate.release(None)
        assert await resp.next_chunk() is None


async def test_many_events_in_one_read_go_out_in_one_write_and_the_partial_tail_waits() -> None:
    async with gated_proxy() as (gate, proxy):
        resp = await raw_request(proxy, "GET", "/", {})
        gate.release(b"data: a\n\ndata: b\n\ndata: hel")
        assert await resp.next_chunk() == b"data: a\n\ndata: b\n\n"
        gate.release(b"lo\n\n")
        assert await resp.next_chunk() == b"data: hello\n\n"
        gate.release(None)
        assert await resp.next_chunk() is None


async def test_local_upstreams_are_asked_for_identity_and_pass_mode_forwards_the_client_value() -> None:
    gate = Gate()
    seen: list[dict[str, str]] = []
    app = gated_stream_app(gate, "text/event-stream", seen=seen)
    async with running_app(app) as upstream:
        routes = [{"path": "/auto", "upstream": upstream},
                  {"path": "/pass", "upstream": upstream, "upstream_compression": "pass"}]
        async with running_proxy({"routes": routes}) as (proxy, _):
            for path in ("/auto", "/pass"):
                resp = await raw_request(proxy, "GET", path, {"Accept-Encoding": "gzip, br"})
                gate.release(None)
                assert await resp.next_chunk() is None
    assert seen[0]["Accept-Encoding"] == "identity"
    assert seen[1]["Accept-Encoding"] == "gzip, br"


async def test_heartbeat_during_silence_only_between_whole_events() -> None:
    async with gated_proxy(heartbeat="100ms") as (gate, proxy):
        resp = await raw_request(proxy, "GET", "/", {})
        gate.release(b"data: one\n\n")
        assert await resp.next_chunk() == b"data: one\n\n"
        assert await resp.next_chunk() == b": keep-alive\n\n"  # silence: a comment keeps the stream alive
        gate.release(b"data: tw")  # half an event: the client is still between events ...
        assert await resp.next_chunk() == b": keep-alive\n\n"  # ... so heartbeats go on, never inside it
        gate.release(b"o\n\n")
        chunk = await resp.next_chunk()
        while chunk == b": keep-alive\n\n":
            chunk = await resp.next_chunk()
        assert chunk == b"data: two\n\n"
        gate.release(None)
        while (chunk := await resp.next_chunk()) is not None:
            assert chunk == b": keep-alive\n\n"


async def test_ndjson_streams_get_no_heartbeat() -> None:
    async with gated_proxy("application/x-ndjson", heartbeat="50ms") as (gate, proxy):
        resp = await raw_request(proxy, "GET", "/", {})
        with pytest.raises(asyncio.TimeoutError):
            await resp.next_chunk(timeout=0.3)  # a blank line would break NDJSON readers
        gate.release(b'{"a": 1}\n')
        assert await resp.next_chunk() == b'{"a": 1}\n'
        gate.release(None)
        assert await resp.next_chunk() is None


async def test_an_oversized_frame_is_forwarded_as_it_comes() -> None:
    gate = Gate()
    app = gated_stream_app(gate, "text/event-stream")
    big = b"data: " + b"x" * (1024 * 1024 + 10)
    async with running_app(app) as upstream, running_proxy({"routes": [{"upstream": upstream}]}) as (proxy, _):
        resp = await raw_request(proxy, "GET", "/", {})
        gate.release(big)  # over 1 MiB without an end: let through rather than held without bound
        received = b""
        while len(received) < len(big) - 3:
            received += await resp.next_chunk()
        gate.release(b"\n\ndata: next\n\n")
        while not received.endswith(b"data: next\n\n"):
            received += await resp.next_chunk()
        assert received == big + b"\n\ndata: next\n\n"
        gate.release(None)
        assert await resp.next_chunk() is None


async def test_101_concurrent_streams_all_flow() -> None:
    async with gated_proxy() as (gate, proxy):
        responses = await asyncio.gather(*(raw_request(proxy, "GET", f"/{i}", {}) for i in range(101)))
        for _ in responses:
            gate.release(b"data: hi\n\n")
        chunks = await asyncio.gather(*(r.next_chunk() for r in responses))
        assert chunks == [b"data: hi\n\n"] * 101  # no pool cap made the 101st wait
        for r in responses:
            r.close()


async def test_gzip_non_stream_passes_byte_for_byte() -> None:
    from aiohttp import web

    body = zlib.compress(b"{}" * 1000)

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, headers={"Content-Encoding": "deflate", "Content-Type": "application/json"})

    app = web.Application()
    app.router.add_get("/", handler)
    async with running_app(app) as upstream, running_proxy({"routes": [{"upstream": upstream}]}) as (proxy, _):
        resp = await raw_request(proxy, "GET", "/", {"Accept-Encoding": "deflate"})
        assert resp.headers["content-encoding"] == "deflate"
        assert resp.headers["content-length"] == str(len(body))
        assert await resp.body() == body


async def test_idle_timer_restarts_with_every_byte_so_long_streams_are_never_cut() -> None:
    """A stream that lasts three idle periods, never silent for one, is never cut: each event is
    released by the gate as soon as the previous one reached the client."""
    async with gated_proxy(timeouts={"idle": "300ms"}, heartbeat=0) as (gate, proxy):
        resp = await raw_request(proxy, "GET", "/", {})
        loop = asyncio.get_running_loop()
        started = loop.time()
        i = 0
        while loop.time() - started < 0.9 and i < 100_000:  # bounded in count and time
            gate.release(f"data: {i}\n\n".encode())
            assert await resp.next_chunk() == f"data: {i}\n\n".encode()
            i += 1
        assert loop.time() - started >= 0.9  # the stream outlived three idle periods
        gate.release(None)
        assert await resp.next_chunk(WAIT) is None


async def test_the_events_of_one_upstream_read_go_to_the_client_in_one_write() -> None:
    """Several upstream chunks in one read (events that came close together) are written to the client
    as one chunk: one write, one syscall, not one per upstream chunk."""
    gate = Gate()
    events = [b"data: %d\n\n" % i for i in range(3)]

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(SSE_HEAD)
        await gate.next()  # the client has the head: what follows comes in a read of its own
        writer.write(b"".join(chunk(e) for e in events))
        await gate.next()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with raw_proxy(upstream) as proxy:
        resp = await raw_request(proxy, "GET", "/", {})
        assert resp.status == 200
        gate.release(b"")
        assert await resp.next_chunk() == b"".join(events)
        gate.release(None)
        assert await resp.next_chunk() is None
        resp.close()


async def test_last_events_and_the_end_in_one_read_end_the_stream_once_and_the_connection_serves_on() -> None:
    """The relay writes a stream's last events and the body's last chunk itself, in one write; the
    response then counts as ended, so the next request's answer on the same connection starts clean
    (a second last chunk would stand before its head)."""
    served = 0

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        while True:  # kept alive: one stream per request, events and end in one write
            try:
                await read_head(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            served += 1
            writer.write(SSE_HEAD + chunk(b"data: %d\n\n" % served) + chunk(b"data: last\n\n") + b"0\r\n\r\n")
            await writer.drain()

    async with raw_proxy(upstream) as proxy:
        host, port = proxy.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            bodies = []
            for _ in range(2):  # two streams, one after the other, on one client connection
                writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
                head = await read_head(reader)
                assert head.startswith(b"HTTP/1.1 200"), head
                assert b"transfer-encoding: chunked" in head.lower()
                bodies.append(await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), WAIT))
        finally:
            writer.close()
    assert bodies == [chunk(b"data: %d\n\ndata: last\n\n" % n) + b"0\r\n\r\n" for n in (1, 2)]


async def test_compressed_bytes_that_decode_to_nothing_yet_still_restart_the_idle_timer() -> None:
    """Idle is the upstream's silence between bytes, not between decoded events: a gzip header that
    arrives a byte at a time for twice the idle timeout (each byte decodes to nothing) is not cut."""
    compressor = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    body = compressor.compress(b"data: late\n\n") + compressor.flush()
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: gzip\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(head)
        for i in range(10):  # the 10-byte gzip header, a byte every 0.1 s: never silent for the 0.5 s idle
            writer.write(chunk(body[i:i + 1]))
            await writer.drain()
            await asyncio.sleep(0.1)
        writer.write(chunk(body[10:]) + b"0\r\n\r\n")
        await writer.drain()

    async with raw_proxy(upstream, timeouts={"idle": "500ms"}, heartbeat=0) as proxy:
        resp = await raw_request(proxy, "GET", "/", {})
        assert await resp.next_chunk() == b"data: late\n\n"
        assert await resp.next_chunk() is None
        resp.close()
