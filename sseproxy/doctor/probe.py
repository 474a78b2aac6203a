"""The doctor's only I/O: one request on a raw socket (TLS for https), each read stamped with a
monotonic time as the event loop hands it over, fed to a Recorder."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from .. import __version__
from ..decoding import DecodeError
from .http1 import ProtocolError, request_bytes
from .timeline import Recorder, Timeline

MAX_QUEUED = 1024 * 1024  # bounds the bytes read but not yet recorded: reading pauses past it
BROWSER_ENCODING = "gzip, deflate, br"


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str  # path and query, as sent on the request line

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def parse_target(url: str) -> Target:
    """The URL's parts; ValueError naming what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) URL")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ValueError(f"{url!r} has a bad port") from None
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, parts.hostname, port, path)


@dataclass(frozen=True)
class Request:
    """What to ask for, as given on the command line. ``headers`` replace the doctor's defaults of the
    same name; an empty value removes one (as curl's ``-H 'Name:'`` does)."""

    url: str
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    timeout: float = 30.0
    insecure: bool = False

    def header_lines(self, target: Target, accept_encoding: str) -> list[tuple[str, str]]:
        defaults = [("Host", target.authority), ("User-Agent", f"sseproxy-doctor/{__version__}"),
                    ("Accept", "text/event-stream"), ("Accept-Encoding", accept_encoding),
                    ("Cache-Control", "no-cache")]
        if self.body:
            json_like = self.body.lstrip()[:1] in (b"{", b"[")
            defaults.append(("Content-Type", "application/json" if json_like else "application/x-www-form-urlencoded"))
        given = {name.lower(): (name, value) for name, value in self.headers}
        if accept_encoding == "identity":  # the second request is identity, whatever -H said
            given.pop("accept-encoding", None)
        lines = [given.pop(name.lower(), (name, value)) for name, value in defaults]
        lines += given.values()
        if self.body:
            lines.append(("Content-Length", str(len(self.body))))
        return [(name, value) for name, value in lines if value]


class _Reads(asyncio.Protocol):
    """Collects each read with the time the loop delivered it."""

    def __init__(self) -> None:
        self.reads: collections.deque[tuple[float, bytes]] = collections.deque()
        self.eof = False
        self.error: Exception | None = None
        self.transport: asyncio.Transport | None = None
        self._queued = 0
        self._paused = False
        self._wake = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reads.append((time.monotonic(), data))
        self._queued += len(data)
        if self._queued > MAX_QUEUED and self.transport is not None and not self._paused:
            self._paused = True
            self.transport.pause_reading()
        self._wake.set()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake.set()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self._wake.set()

    async def next(self) -> tuple[float, bytes] | None:
        """The next read, or None once the connection has closed."""
        while not self.reads:
            if self.eof:
                return None
            self._wake.clear()
            await self._wake.wait()
        t, data = self.reads.popleft()
        self._queued -= len(data)
        if self._paused and self._queued <= MAX_QUEUED // 2 and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return t, data


def _tls_context(insecure: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.set_alpn_protocols(["http/1.1"])
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _connect_message(target: Target, e: BaseException) -> str:
    where = f"{target.host}:{target.port}"
    if isinstance(e, socket.gaierror):
        return f"cannot resolve {target.host}: {e.strerror or e}"
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"TLS to {where}: {e.verify_message or e} (-k skips verification)"
    if isinstance(e, ssl.SSLError):
        return f"TLS to {where}: {e.reason or e}"
    if isinstance(e, OSError) and e.errno:
        return f"cannot connect to {where}: {os.strerror(e.errno)}"
    return f"cannot connect to {where}: {e}"


async def probe(request: Request, accept_encoding: str) -> Timeline:
    """One request with this Accept-Encoding, recorded until the response ends, fails, or
    ``request.timeout`` passes (counted from the start, connecting included)."""
    target = parse_target(request.url)
    headers = request.header_lines(target, accept_encoding)
    sent = [value for name, value in headers if name.lower() == "accept-encoding"]  # -H may have changed it
    timeline = Timeline(sent[0] if sent else "(none)")
    recorder = Recorder(timeline, request.method)
    payload = request_bytes(request.method, target.path, headers, request.body)
    deadline = time.monotonic() + request.timeout
    loop = asyncio.get_running_loop()
    tls = _tls_context(request.insecure) if target.scheme == "https" else None
    try:
        async with asyncio.timeout_at(loop.time() + request.timeout):
            transport, reads = await loop.create_connection(
                _Reads, target.host, target.port, ssl=tls, server_hostname=target.host if tls else None,
                happy_eyeballs_delay=0.25)
    except TimeoutError:
        recorder.fail("timeout", f"no connection to {target.host}:{target.port} within {request.timeout:g}s")
        return timeline
    except (OSError, ssl.SSLError) as e:
        recorder.fail("connect_failed", _connect_message(target, e))
        return timeline
    try:
        with contextlib.suppress(OSError):
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.write(payload)
        start = time.monotonic()
        await _record(reads, recorder, start, loop.time() + (deadline - time.monotonic()), request.timeout)
    finally:
        transport.abort()
    return timeline


async def _record(reads: _Reads, recorder: Recorder, start: float, loop_deadline: float, timeout: float) -> None:
    try:
        async with asyncio.timeout_at(loop_deadline):
            while not recorder.done:
                got = await reads.next()
                if got is None:
                    if not recorder.has_head:
                        why = f": {reads.error}" if reads.error else ""
                        recorder.fail("bad_response", f"the connection closed before a response{why}")
                    recorder.close()
                    return
                t, data = got
                recorder.feed(max(0.0, t - start), data)
    except TimeoutError:
        if not recorder.has_head:
            recorder.fail("timeout", f"no response within {timeout:g}s")
        recorder.stop()
    except ProtocolError as e:
        recorder.fail("bad_response", f"not a valid HTTP/1.1 response: {e}")
    except DecodeError as e:
        recorder.fail("decode_failed", str(e))
