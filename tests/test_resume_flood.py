"""A resumable route under a flood: ten streams, each sent as fast as a fair upstream can, all get
their share. The proxy runs as a real process (on uvloop, as it is deployed): there libuv reads a
readable socket up to 32 times in one callback, which is what let the first streams take it all."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from helpers import WAIT, raw_server, read_head
from procs import sseproxy_process

STREAMS = 10
LEADER = 30_000  # events the best-served stream reads; the others' counts are taken then
EVENT = b'data: {"p": "' + b"x" * 80 + b'"}\n\n'  # about the bench's 100-byte events
BLOCK = EVENT * 64
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"


async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An upstream that is fair itself: one block of events per stream per loop turn, for as long
    as the proxy reads, so any unevenness the clients see is the proxy's."""
    await read_head(reader)
    writer.write(HEAD)
    while not writer.transport.is_closing():
        writer.write(BLOCK)
        await writer.drain()
        await asyncio.sleep(0)


class Counter(asyncio.Protocol):
    """One client: counts the events it receives (each ends with a blank line; the response head and
    the chunk framing have none). When any client reaches ``LEADER``, every count is taken."""

    def __init__(self, counts: list[int], index: int, taken: asyncio.Future[list[int]]):
        self.counts, self.index, self.taken = counts, index, taken
        self.last = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")

    def data_received(self, data: bytes) -> None:
        joined = self.last + data  # a blank line cut between two reads
        self.counts[self.index] += joined.count(b"\n\n") - self.last.count(b"\n\n")
        self.last = data[-1:]
        if self.counts[self.index] >= LEADER and not self.taken.done():
            self.taken.set_result(list(self.counts))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.taken.done():
            self.taken.set_exception(AssertionError(f"stream {self.index} ended early: {self.counts}"))


async def test_ten_flooding_streams_on_a_resumable_route_each_get_a_share(tmp_path: Path) -> None:
    config = tmp_path / "flood.yaml"
    async with raw_server(flood) as upstream:
        config.write_text(json.dumps({
            "listen": "127.0.0.1:0", "shutdown_grace": 0.5,
            "routes": [{"path": "/", "upstream": upstream, "resume": {"detach": "1s"}}]}))
        async with sseproxy_process("serve", "--config", str(config), "--log-level", "warning") as (_, url):
            loop = asyncio.get_running_loop()
            port = int(url.rsplit(":", 1)[1])
            counts = [0] * STREAMS
            taken: asyncio.Future[list[int]] = loop.create_future()
            transports = [(await loop.create_connection(lambda i=i: Counter(counts, i, taken), "127.0.0.1", port))[0]
                          for i in range(STREAMS)]
            try:
                at_leader = await asyncio.wait_for(taken, WAIT * 6)
            finally:
                for transport in transports:
                    transport.close()
    mean = sum(at_leader) / STREAMS
    assert min(at_leader) >= mean / 3, f"when one stream had {LEADER} events, the streams had {at_leader}"
