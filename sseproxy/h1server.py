"""The listening side: HTTP/1.1 requests parsed by httptools (llhttp, as uvicorn parses them) and
handed to the proxy's handler as a ``LeanRequest``, answered with aiohttp's own response objects
over aiohttp's ``StreamWriter``. No aiohttp server protocol, request object, message or URL per
request, and no task per connection: per idle stream that was about 7 KiB and a fifth of the CPU
it took to open one.

What needs aiohttp's server goes there whole: an Upgrade (WebSocket) hands the connection, with
the bytes read so far, to a ``ProxyProtocol`` (``aiohttp_internals``), which serves it from then on.

Requests on one connection are answered one at a time, in order (HTTP/1.1 asks that of pipelined
requests); the next head waits parsed, reading paused past a few. Everything the aiohttp protocol
did for the proxy holds here too: the request-head deadline (one sweep for all connections), the
``max_header_size`` cap with 431, one log line and a JSON 400 for a head the parser refuses, the
handler cancelled when the client hangs up, and the client's flow control passed to a relay.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, unquote

import httptools
from aiohttp import HttpVersion, StreamReader, web
from aiohttp.http_writer import StreamWriter
from aiohttp.streams import EMPTY_PAYLOAD
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

from .aiohttp_internals import (
    FlowListener,
    HeadDeadlines,
    OnRefused,
    ParserRefusal,
    PreparableRequest,
    ProxyProtocol,
    ProxyServer,
    ServerProtocol,
    refusal_bytes,
)

log = logging.getLogger("sseproxy")

Handler = Callable[[Any], Awaitable[web.StreamResponse]]  # takes a LeanRequest for aiohttp's BaseRequest
BODY_LIMIT = 2**16   # request body bytes buffered before reading pauses (aiohttp's own default)
MAX_WAITING = 8      # pipelined requests parsed ahead of the one being answered; past it reading pauses
MAX_LINE = 8190      # bytes in the request line or one header line (aiohttp's and nginx's 8 KiB)
MAX_HEADERS = 128    # header lines per request (aiohttp's default)
_VERSIONS = {"1.1": HttpVersion(1, 1), "1.0": HttpVersion(1, 0)}


class LeanRequest(PreparableRequest):
    """The inbound request: what the proxy's handler reads of aiohttp's ``BaseRequest``, and what
    aiohttp's ``StreamResponse.prepare`` needs (``PreparableRequest``)."""

    __slots__ = ("_query", "body_exists", "content", "headers", "keep_alive", "method",
                 "protocol", "raw_path", "remote", "version")
    scheme = "http"

    def __init__(self, protocol: LeanProtocol, method: str, raw_path: str, version: HttpVersion,
                 headers: CIMultiDictProxy[str], content: StreamReader, keep_alive: bool):
        super().__init__(protocol, protocol.loop)
        self.protocol = protocol
        self.method = method
        self.raw_path = raw_path
        self.version = version
        self.headers = headers
        self.content = content
        self.body_exists = content is not EMPTY_PAYLOAD
        self.keep_alive = keep_alive
        self.remote = protocol.remote
        self._query: MultiDictProxy[str] | None = None

    @property
    def transport(self) -> asyncio.Transport | None:
        return self.protocol.transport

    @property
    def writer(self) -> StreamWriter:
        return self._payload_writer

    @property
    def path(self) -> str:
        return unquote(self.raw_path.partition("?")[0])

    @property
    def query(self) -> MultiDictProxy[str]:
        if self._query is None:
            self._query = MultiDictProxy(MultiDict(parse_qsl(self.raw_path.partition("?")[2],
                                                             keep_blank_values=True)))
        return self._query

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return None if value is None else int(value)

    @property
    def can_read_body(self) -> bool:
        return not self.content.at_eof()


class _HandOff(Exception):
    """Raised from a parser callback: the request asks to switch protocols; aiohttp's server takes it."""


class _Refused(Exception):
    """Raised from a parser callback: the head is refused (``status``, ``type``, ``message``)."""


class LeanProtocol(ServerProtocol):
    """One client connection. ``ServerProtocol`` (aiohttp's ``BaseProtocol``) gives the write-side flow
    control that aiohttp's ``StreamWriter.drain`` waits on; reading is this class's own."""

    __slots__ = ("_begun", "_body", "_deadline", "_handed_off", "_head_seen", "_headers", "_in_head", "_llhttp",
                 "_raw", "_raw_valid", "_refusal", "_task", "_url", "_waiting", "flow", "remote", "server")

    def __init__(self, server: LeanServer):
        super().__init__(server.loop)
        self.server = server
        self.flow: FlowListener | None = None  # a relay writing to this client directly
        self.remote: str | None = None
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._in_head = False          # between a message's first byte and its headers' end
        self._head_seen = 0            # bytes read while the head now awaited was incomplete
        self._raw = bytearray()        # those bytes, for a hand-off to aiohttp
        self._raw_valid = True         # False: the head began inside a read, its bytes are not all in _raw
        self._body: StreamReader | None = None        # the body the parser is filling
        self._waiting: list[LeanRequest] = []         # parsed, waiting their turn (pipelined: rare)
        self._task: asyncio.Task[None] | None = None  # the request being answered
        self._deadline: float | None = None
        self._handed_off = False
        self._begun = 0                # heads begun in the read being parsed
        self._refusal = b""            # the answer to a refused head, sent after the answer in flight
        self._llhttp: Any = None  # made for each request: between requests (a stream's whole life) none is kept

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    @property
    def busy(self) -> bool:
        return self._task is not None or bool(self._waiting)

    # -- asyncio.Protocol --------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # TCP_NODELAY: set by the loop's transports
        peer = transport.get_extra_info("peername")
        self.remote = str(peer[0]) if isinstance(peer, tuple) else None
        self.server.connections.add(self)
        self.arm_head_deadline()

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        self.server.connections.discard(self)
        self.head_received()
        if self._body is not None:
            self._body.set_exception(ConnectionResetError("the client closed the connection"))
            self._body = None
        if self._task is not None:
            self._task.cancel()  # the handler learns of the hang-up, whatever it awaits
        self._waiting.clear()

    def eof_received(self) -> bool | None:
        return None  # close: a client that half-closes has nothing more to ask

    def data_received(self, data: bytes) -> None:
        if self._handed_off:
            return
        self._begun = 0
        if self._in_head:                                   # a head that began in an earlier read goes on
            self._raw += data
            self._head_seen += len(data)
        elif self._body is None:                            # between messages: a head may begin right here
            self._raw = bytearray(data)
            self._raw_valid = True
            self._head_seen = len(data)
        else:                                               # in a body: a head that begins in this read is
            self._raw_valid = False                         # counted from the next read on
            self._head_seen = 0
        if self._llhttp is None:
            self._llhttp = httptools.HttpRequestParser(self)
        try:
            self._llhttp.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._hand_off()
            return
        except httptools.HttpParserCallbackError as error:
            cause = error.__context__
            if isinstance(cause, _HandOff):
                self._hand_off()
            elif isinstance(cause, _Refused):
                self._refuse(*cause.args)
            else:
                raise
            return
        except httptools.HttpParserError as error:
            self._refuse(400, "bad_request", f"malformed request: {error}")
            return
        if self._in_head and self._head_seen > self.server.max_head:
            self._refuse(431, "header_too_large",
                         f"the request head is over max_header_size ({self.server.max_head} bytes)")
        elif not self._in_head and self._body is None:
            self._llhttp = None  # between messages: about 0.9 KiB not held while the response streams

    # -- httptools callbacks -----------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._begun += 1
        if self._begun > 1:  # a second head in one read: the bytes before it in _raw are not its own
            self._raw_valid = False
        self._in_head = True
        self._url = b""
        self._headers = []

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.server.max_line:
            raise _Refused(431, "header_too_large", f"the request line is over {self.server.max_line} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) + len(value) > self.server.max_line:
            raise _Refused(431, "header_too_large", f"a header line is over {self.server.max_line} bytes")
        self._headers.append((name.decode("latin-1"), value.decode("utf-8", "surrogateescape")))
        if len(self._headers) > self.server.max_headers:
            raise _Refused(400, "bad_request", f"malformed request: over {self.server.max_headers} headers")

    def on_headers_complete(self) -> None:
        self._in_head = False
        self.head_received()  # the deadline is for the whole head, so a head sent a byte at a time is closed
        parser = self._llhttp
        if parser.should_upgrade():
            raise _HandOff()
        headers = CIMultiDictProxy(CIMultiDict(self._headers))
        self._headers = []
        framed = parser.get_method() != b"CONNECT" and (
            ("Content-Length" in headers and headers["Content-Length"] != "0")
            or "Transfer-Encoding" in headers)
        body = StreamReader(self, BODY_LIMIT, loop=self._loop) if framed else EMPTY_PAYLOAD
        version = _VERSIONS.get(parser.get_http_version(), HttpVersion(1, 0))
        request = LeanRequest(self, parser.get_method().decode("ascii"), self._url.decode("latin-1"), version,
                              headers, body, parser.should_keep_alive())
        self._body = body if framed else None
        self._raw = bytearray()
        self._waiting.append(request)
        if len(self._waiting) > MAX_WAITING:
            self._pause_transport_reading()  # bounded: a client pipelining past this waits
        self._start_next()

    def on_body(self, body: bytes) -> None:
        if self._body is not None:
            self._body.feed_data(body)

    def on_message_complete(self) -> None:
        if self._body is not None:
            self._body.feed_eof()
            self._body = None

    # -- reading, for the body reader's flow control -----------------------------------------------
    def pause_reading(self) -> None:
        self._reading_paused = True
        self._pause_transport_reading()

    def resume_reading(self, resume_parser: bool = True) -> None:
        self._reading_paused = False
        if len(self._waiting) <= MAX_WAITING:
            self._resume_transport_reading()

    # -- answering ---------------------------------------------------------------------------------
    def _start_next(self) -> None:
        if self._task is not None or not self._waiting or self.transport is None:
            return
        request = self._waiting.pop(0)
        if not self._reading_paused:
            self._resume_transport_reading()
        self._task = self._loop.create_task(self._answer(request))

    async def _answer(self, request: LeanRequest) -> None:
        keep_alive = False
        try:
            try:
                response = await self.server.handler(request)
            except (asyncio.CancelledError, ConnectionError):
                raise
            except Exception:  # the handler logged it: the client gets a 500, the connection closes
                response = web.Response(status=500, text="500 Internal Server Error")
                response.force_close()
            if not response.prepared:
                await response.prepare(request)  # type: ignore[arg-type]  # a LeanRequest stands in
            await response.write_eof()
            # reused only when the response allows it and the body was read to its end
            keep_alive = bool(response.keep_alive) and request.content.is_eof() and not self.server.closing
        except (asyncio.CancelledError, ConnectionError):
            keep_alive = False
        finally:
            self._task = None
            self.flow = None
        if self.transport is None:
            return
        if self._refusal:  # a head after this one was refused
            self.transport.write(self._refusal)
            keep_alive = False
        if not keep_alive:
            self.transport.close()
            return
        if self._waiting:
            self._start_next()
        else:
            self.arm_head_deadline()

    def close_if_idle(self) -> None:
        if not self.busy and self.transport is not None:
            self.transport.close()

    async def shutdown(self, timeout: float) -> None:
        """Let the request in flight finish within ``timeout``, then close."""
        task = self._task
        if task is not None:
            _, pending = await asyncio.wait({task}, timeout=timeout)
            for unfinished in pending:
                unfinished.cancel()
        if self.transport is not None:
            self.transport.close()

    # -- the head's deadline and refusals ------------------------------------------------------------
    def arm_head_deadline(self) -> None:
        self._deadline = self.server.deadlines.arm(self)

    def head_received(self) -> None:
        if self._deadline is not None:
            self.server.deadlines.disarm(self)
            self._deadline = None

    def head_too_slow(self) -> None:
        self._deadline = None
        if self.transport is not None:
            log.debug("closing a connection whose request head took over %ss", self.server.deadlines.timeout)
            self.transport.close()

    def _refuse(self, status: int, kind: str, message: str) -> None:
        """A head the parser refused: one access-log line and a JSON answer, then the connection closes
        (nothing after a bad head can be trusted to be a request)."""
        self._handed_off = True  # nothing more is parsed
        self.head_received()
        refusal = ParserRefusal(status, kind, message, self.remote)
        self.server.on_refused(refusal)
        if self.transport is None:
            return
        self._waiting.clear()
        if self._task is not None:  # after the answer in flight: in order, as HTTP/1.1 answers go
            self._refusal = refusal_bytes(refusal)
            self._pause_transport_reading()
            return
        self.transport.write(refusal_bytes(refusal))
        self.transport.close()

    def _hand_off(self) -> None:
        """An Upgrade: aiohttp's server takes the connection, fed the bytes of this request."""
        if not self._raw_valid or self.busy or self.transport is None:
            self._refuse(400, "bad_request", "an Upgrade request must not follow another request in one read")
            return
        self._handed_off = True
        self.head_received()
        self.server.connections.discard(self)
        protocol = self.server.upgrades()
        transport, raw = self.transport, bytes(self._raw)
        self.transport = None
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        protocol.data_received(raw)


class LeanServer:
    """The protocol factory for the listening socket, and the set of its open connections."""

    def __init__(self, handler: Handler, *, upgrades: ProxyServer, deadlines: HeadDeadlines, max_head: int,
                 on_refused: OnRefused, max_headers: int = MAX_HEADERS):
        self.loop = asyncio.get_running_loop()
        self.handler = handler
        self.upgrades = upgrades  # aiohttp's server, for the connections handed to it
        self.deadlines = deadlines
        self.max_head = max_head
        self.max_headers = max_headers
        self.max_line = min(MAX_LINE, max_head)  # aiohttp's per-line caps, never above the whole head's
        self.on_refused = on_refused
        self.connections: set[LeanProtocol] = set()
        self.closing = False

    def __call__(self) -> LeanProtocol:
        return LeanProtocol(self)

    def pre_shutdown(self) -> None:
        """Idle kept-alive connections close now; busy ones after their response."""
        self.closing = True
        for connection in list(self.connections):
            connection.close_if_idle()

    async def shutdown(self, timeout: float) -> None:
        await asyncio.gather(*(c.shutdown(timeout) for c in list(self.connections)))


CLIENT_PROTOCOLS = (LeanProtocol, ProxyProtocol)  # a client connection a relay may write to directly
