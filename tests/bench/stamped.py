"""A stream read straight off its socket, each read with the kernel's receive time (SO_TIMESTAMPNS):
the added latency of an event is when the proxy's bytes reached the load client's socket, not when
this Python process got round to them.

On a 2-core machine the load client shares its core with the origin; during the 1,000-stream
scenario its own event loop stalled up to 51 ms (a probe measured it), and a reader that stamps
events with ``time.time_ns()`` after the read counts those stalls as the proxy's. httptools parses
the response (status, chunked framing), as the proxy itself does.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from typing import Any

import httptools
from yarl import URL

PREFIX = b'data: {"t": '
_TIMESTAMP = struct.Struct("@qq")  # struct timespec: seconds, nanoseconds
_ANCILLARY = socket.CMSG_SPACE(_TIMESTAMP.size)
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux's value where Python does not name it
UNTIL_GRACE = 2.0  # seconds a timed read waits past its end for one more read


class StampedStream:
    """The parser's callbacks for one response: events with their receive time go to ``result``."""

    def __init__(self, result: Any, started: int) -> None:
        self.result = result
        self.started = started
        self.at = 0             # the kernel's receive time of the read being parsed (ns)
        self.status = 0
        self.complete = False
        self.first = True
        self.buf = bytearray()
        self.parser = httptools.HttpResponseParser(self)

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        result, buf = self.result, self.buf
        result.bytes += len(body)
        buf += body
        start = 0
        while (end := buf.find(b"\n\n", start)) >= 0:
            if buf.startswith(PREFIX, start):
                stamp = int(buf[start + len(PREFIX): buf.index(b",", start)])
                result.latencies_ns.append(self.at - stamp)
                result.events += 1
                if self.first:
                    result.ttfe_ns.append(self.at - self.started)
                    self.first = False
            start = end + 2
        del buf[:start]

    def on_message_complete(self) -> None:
        self.complete = True


def received_at(ancillary: list[tuple[int, int, bytes]]) -> int:
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(data) >= _TIMESTAMP.size:
            seconds, nanoseconds = _TIMESTAMP.unpack_from(data)
            return seconds * 1_000_000_000 + nanoseconds
    return time.time_ns()  # no stamp came with this read: the time now, as before


async def read(url: str, result: Any, until: float | None, on_open: Any, on_close: Any) -> str | None:
    """Read one stream to its end (or to ``until``, monotonic); ``None``, or why it failed."""
    loop = asyncio.get_running_loop()
    target = URL(url)
    request = (f"GET {target.raw_path_qs} HTTP/1.1\r\nHost: {target.raw_authority}\r\n"
               "Accept: text/event-stream\r\nConnection: close\r\n\r\n").encode()
    started = time.time_ns()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stream = StampedStream(result, started)
    done: asyncio.Future[str | None] = loop.create_future()
    opened = False

    def readable() -> None:
        nonlocal opened
        try:
            data, ancillary, _, _ = sock.recvmsg(262144, _ANCILLARY)
        except BlockingIOError:
            return
        except OSError as error:
            if not done.done():
                done.set_result(type(error).__name__)
            return
        if not data:
            if not done.done():
                done.set_result(None if stream.complete else "closed before the end")
            return
        stream.at = received_at(ancillary)
        try:
            stream.parser.feed_data(data)
        except httptools.HttpParserError as error:
            if not done.done():
                done.set_result(type(error).__name__)
            return
        if stream.status and not opened:
            if stream.status != 200:
                if not done.done():
                    done.set_result(f"HTTP {stream.status}")
                return
            opened = True
            on_open()
        if not done.done() and (stream.complete or (until is not None and time.monotonic() >= until)):
            done.set_result(None)

    try:
        await asyncio.wait_for(loop.sock_connect(sock, (target.raw_host or "", target.port or 80)), 60)
        await loop.sock_sendall(sock, request)
        loop.add_reader(sock.fileno(), readable)
        # a timed read ends at ``until`` even if this stream got nothing more (a starved stream counts
        # what it got); any other waits at most five minutes
        limit = 300.0 if until is None else max(0.0, until - time.monotonic()) + UNTIL_GRACE
        try:
            return await asyncio.wait_for(done, limit)
        except TimeoutError:
            return None if until is not None else "TimeoutError"
        finally:
            loop.remove_reader(sock.fileno())
    except (OSError, TimeoutError) as error:
        return type(error).__name__
    finally:
        if opened:
            on_close()
        sock.close()
