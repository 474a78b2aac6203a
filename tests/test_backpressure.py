"""A client that stops reading holds the upstream back, and the proxy's memory stays bounded."""

from __future__ import annotations

import asyncio

from helpers import raw_request, raw_server, read_head
from procs import peak_rss_bytes, sseproxy_process

MiB = 1024 * 1024
OFFER = 200 * MiB
EVENT = b"data: " + b"x" * 1017 + b"\n\n"  # 1 KiB events
PIECE = EVENT * 64  # 64 KiB per upstream write


async def test_a_client_that_stops_reading_holds_the_upstream_back_with_bounded_memory() -> None:
    sent = 0
    upstream_closed = asyncio.Event()

    async def offer_200_mib(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        frame = b"%x\r\n%s\r\n" % (len(PIECE), PIECE)
        try:
            while sent < OFFER:  # at most 3,200 writes
                writer.write(frame)
                await writer.drain()  # blocks while the proxy is not reading
                sent += len(PIECE)
        finally:
            upstream_closed.set()

    async with raw_server(offer_200_mib) as upstream, sseproxy_process(
            "serve", "--listen", "127.0.0.1:0", "--route", f"/={upstream}") as (proc, url):
        baseline = peak_rss_bytes(proc.pid)  # the process as it started, before any stream
        client = await raw_request(url, "GET", "/", {})  # reads the head, then never reads again
        assert client.status == 200
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        last, still_since = -1, loop.time()
        while loop.time() < deadline:  # wait until the upstream has been held for a second
            if sent != last:
                last, still_since = sent, loop.time()
            elif loop.time() - still_since > 1.0:
                break
            await asyncio.sleep(0.1)
        assert 0 < sent < 64 * MiB, f"upstream was not held back: {sent / MiB:.1f} MiB sent"
        peak = peak_rss_bytes(proc.pid)
        print(f"held back at {sent / MiB:.1f} MiB sent; proxy peak RSS {peak / MiB:.1f} MiB, "
              f"{(peak - baseline) / MiB:.1f} MiB over its start")
        # one stream's buffers (socket buffers, one 1 MiB frame, decoder pieces) stay within a few MiB
        assert peak - baseline < 12 * MiB, f"proxy grew by {(peak - baseline) / MiB:.1f} MiB for one stream"
        client.writer.transport.abort()
        await asyncio.wait_for(upstream_closed.wait(), 5)  # and the hang-up reaches the upstream
