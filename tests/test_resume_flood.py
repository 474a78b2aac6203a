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
LEADER = 10_000  # events the best-served stream gains; the others' gains are taken then
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


class Tally:
    """The ten clients' event counts: when every stream has begun, the counts are the baseline; when
    one stream has gained ``LEADER`` events since then, every gain is taken."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.counts = [0] * STREAMS
        self.baseline: list[int] | None = None
        self.begun: asyncio.Future[None] = loop.create_future()
        self.taken: asyncio.Future[list[int]] = loop.create_future()

    def add(self, index: int, events: int) -> None:
        self.counts[index] += events
        if self.baseline is None:
            if all(self.counts):
                self.baseline = list(self.counts)
                self.begun.set_result(None)
            return
        gains = [c - b for c, b in zip(self.counts, self.baseline, strict=True)]
        if max(gains) >= LEADER and not self.taken.done():
            self.taken.set_result(gains)

    def ended(self, index: int) -> None:
        for waiter in (self.begun, self.taken):
            if not waiter.done():
                waiter.set_exception(AssertionError(f"stream {index} ended early: {self.counts}"))


class Counter(asyncio.Protocol):
    """One client: counts the events it receives (each ends with a blank line; the response head and
    the chunk framing have none)."""

    def __init__(self, tally: Tally, index: int):
        self.tally, self.index = tally, index
        self.last = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")

    def data_received(self, data: bytes) -> None:
        joined = self.last + data  # a blank line cut between two reads
        self.tally.add(self.index, joined.count(b"\n\n") - self.last.count(b"\n\n"))
        self.last = data[-1:]

    def connection_lost(self, exc: Exception | None) -> None:
        self.tally.ended(self.index)


async def test_ten_flooding_streams_on_a_resumable_route_each_get_a_share(tmp_path: Path) -> None:
    """Counted from the moment all ten have begun (they connect together, but not in one instant),
    until one has gained ``LEADER`` events: the least-served has gained a third of the mean or more."""
    config = tmp_path / "flood.yaml"
    async with raw_server(flood) as upstream:
        config.write_text(json.dumps({
            "listen": "127.0.0.1:0", "shutdown_grace": 0.5,
            "routes": [{"path": "/", "upstream": upstream, "resume": {"detach": "1s"}}]}))
        async with sseproxy_process("serve", "--config", str(config), "--log-level", "warning") as (_, url):
            loop = asyncio.get_running_loop()
            port = int(url.rsplit(":", 1)[1])
            tally = Tally(loop)
            opened = await asyncio.gather(*(loop.create_connection(lambda i=i: Counter(tally, i), "127.0.0.1", port)
                                            for i in range(STREAMS)))
            try:
                try:
                    await asyncio.wait_for(asyncio.shield(tally.begun), WAIT * 3)
                except TimeoutError:
                    raise AssertionError(f"not every stream began: {tally.counts}") from None
                gains = await asyncio.wait_for(tally.taken, WAIT * 3)
            finally:
                for transport, _ in opened:
                    transport.close()
    mean = sum(gains) / STREAMS
    assert min(gains) >= mean / 3, f"when one stream had gained {LEADER} events, the streams had gained {gains}"
