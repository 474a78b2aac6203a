"""When the upstream fails mid-stream, or the client hangs up, through a running proxy.

The misbehaving upstreams are raw asyncio sockets, so they can send half an event, bad chunking
or a reset exactly."""

from __future__ import annotations

import asyncio
import json

import pytest
from helpers import WAIT, Truncated, raw_request, read_head, reset
from upstreams import SSE_HEAD, answers, chunk, raw_proxy

NDJSON_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n")


async def expect_error_then_truncation(resp, first: bytes, expect_event: bool) -> dict:  # type: ignore[no-untyped-def]
    assert await resp.next_chunk() == first
    error = None
    if expect_event:
        frame = await resp.next_chunk()
        assert frame.startswith(b"event: error\ndata: ") and frame.endswith(b"\n\n")
        error = json.loads(frame.split(b"data: ", 1)[1])
        assert error["error"]["type"] == "upstream_error"
    with pytest.raises(Truncated):  # closed without the final chunk: never a clean end
        await resp.next_chunk()
    return error or {}


@pytest.mark.parametrize("head,first,expect_event", [
    (SSE_HEAD, b"data: one\n\n", True),
    (NDJSON_HEAD, b'{"one": 1}\n', False),
])
async def test_upstream_reset_mid_stream_gives_error_event_and_a_truncated_transfer(
        head: bytes, first: bytes, expect_event: bool) -> None:
    release = asyncio.Event()

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(head + chunk(first) + chunk(first[:4]))  # one whole frame and half of the next
        await writer.drain()
        await asyncio.wait_for(release.wait(), WAIT)
        reset(writer)

    async with raw_proxy(upstream) as proxy:
        resp = await raw_request(proxy, "GET", "/", {})
        assert await resp.next_chunk() == first
        release.set()
        resp.chunks.clear()
        error = None
        if expect_event:
            frame = await resp.next_chunk()
            assert frame.startswith(b"event: error\ndata: ")  # the half frame was never forwarded
            error = json.loads(frame.split(b"data: ", 1)[1])
        with pytest.raises(Truncated):
            await resp.next_chunk()
        if expect_event:
            assert error is not None and error["error"]["type"] == "upstream_error"


async def test_bad_chunking_from_upstream_is_an_upstream_error() -> None:
    delivered = asyncio.Event()

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(SSE_HEAD + chunk(b"data: one\n\n"))
        await writer.drain()
        await asyncio.wait_for(delivered.wait(), WAIT)
        writer.write(b"zz\r\nnot a chunk\r\n")
        await writer.drain()
        await asyncio.sleep(WAIT)

    async with raw_proxy(upstream) as proxy:
        resp = await raw_request(proxy, "GET", "/", {})
        assert await resp.next_chunk() == b"data: one\n\n"
        delivered.set()
        frame = await resp.next_chunk()
        assert frame.startswith(b"event: error\ndata: ")
        assert json.loads(frame.split(b"data: ", 1)[1])["error"]["type"] == "upstream_error"
        with pytest.raises(Truncated):
            await resp.next_chunk()


async def test_idle_timeout_mid_stream_gives_error_event_and_truncation() -> None:
    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(SSE_HEAD + chunk(b"data: one\n\n"))
        await writer.drain()
        await asyncio.sleep(WAIT)  # silent for longer than the route's idle timeout

    async with raw_proxy(upstream, timeouts={"idle": "300ms"}, heartbeat=0) as proxy:
        resp = await raw_request(proxy, "GET", "/", {})
        error = await expect_error_then_truncation(resp, b"data: one\n\n", True)
        assert "300ms" in error["error"]["message"] or "0.3" in error["error"]["message"]


async def test_upstream_closing_a_chunked_body_early_is_truncation_not_a_clean_end() -> None:
    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(SSE_HEAD + chunk(b"data: one\n\n"))
        await writer.drain()
        writer.close()  # FIN without the final 0-chunk

    async with raw_proxy(upstream) as proxy:
        resp = await raw_request(proxy, "GET", "/", {})
        await expect_error_then_truncation(resp, b"data: one\n\n", True)


@pytest.mark.parametrize("silent", [True, False])
async def test_client_hang_up_cancels_the_upstream_within_a_second(silent: bool) -> None:
    upstream_closed = asyncio.Event()
    client_gone = asyncio.Event()

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(SSE_HEAD + chunk(b"data: one\n\n"))
        await writer.drain()
        if silent:
            await reader.read()  # returns b"" as soon as the proxy closes this connection
            upstream_closed.set()
            return
        await asyncio.wait_for(client_gone.wait(), WAIT)
        try:
            for i in range(1000):  # still generating tokens: writes fail once the proxy has closed
                writer.write(chunk(b"data: %d\n\n" % i))
                await writer.drain()
                await asyncio.sleep(0.01)
                if reader.at_eof():
                    break
        finally:
            upstream_closed.set()

    async with raw_proxy(upstream) as proxy:
        resp = await raw_request(proxy, "GET", "/", {})
        assert await resp.next_chunk() == b"data: one\n\n"
        resp.writer.transport.abort()
        client_gone.set()
        await asyncio.wait_for(upstream_closed.wait(), 1.0)


async def test_redirects_are_relayed_not_followed() -> None:
    redirect = answers(b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:9/elsewhere\r\nContent-Length: 0\r\n\r\n")
    async with raw_proxy(redirect) as proxy:
        resp = await raw_request(proxy, "GET", "/", {})
        assert resp.status == 302
        assert resp.headers["location"] == "http://127.0.0.1:9/elsewhere"
