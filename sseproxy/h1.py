"""A lean HTTP/1.1 client connection for plain-http upstreams: kept alive and reused (``h1pool``)
with a few tens of microseconds of Python per request, and the response body handed to a sink from
the protocol's own ``data_received`` (no future, no task, no reader per chunk).

httptools (llhttp, as uvicorn uses it) parses the responses. aiohttp's ClientSession stays for TLS
upstreams, WebSocket handshakes and HEAD requests. What the guarded aiohttp connector does for those,
this does too: a pooled connection that turns readable while idle is closed; bytes after a complete
response close the connection (the response is relayed); at most ``MAX_INTERIM`` 1xx responses; a
101 nobody asked for, a reset ending a close-delimited body, and a response that arrives before the
request body was sent are never taken for a clean, reusable exchange.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, Callable
from typing import TYPE_CHECKING, Protocol

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from .errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from .upstream import OutboundRequest, Timeouts

if TYPE_CHECKING:
    from .h1pool import H1Pool

log = logging.getLogger("sseproxy")

MAX_INTERIM = 5          # 1xx responses accepted before the final one (Go's limit)
KEEPALIVE = 15.0         # seconds an idle pooled connection is kept (aiohttp's default)
EARLY_BODY = 256 * 1024  # body bytes held before a sink is attached; past it the socket is not read
_BODYLESS = {204, 304}


class BodySink(Protocol):
    def body(self, data: bytes) -> None:
        """A piece of the response body (de-chunked), in the protocol's callback."""

    def finished(self, error: BaseException | None, last: bytes = b"") -> None:
        """The body ended: cleanly (``None``) or not. ``last`` holds the body pieces parsed from the
        read that ended it, not given to ``body``: a relay can write them with the end, in one write."""


class H1Response:
    """The head of an upstream response; the body goes to the sink given to ``attach``."""

    __slots__ = ("connection", "headers", "reason", "status")  # one per stream in flight: no instance dict

    def __init__(self, connection: H1Connection, status: int, reason: str, headers: CIMultiDictProxy[str]):
        self.connection = connection
        self.status = status
        self.reason = reason
        self.headers = headers

    def attach(self, sink: BodySink) -> None:
        self.connection.attach(sink)

    def pause(self) -> None:
        self.connection.pause_reading()

    def resume(self) -> None:
        self.connection.resume_reading()

    def close(self) -> None:
        """Abort: the upstream sees its connection closed at once (no tokens generated for nobody)."""
        self.connection.abort()

    def release(self) -> None:
        """The exchange ended cleanly: the connection goes back to the pool if it may be reused."""
        self.connection.finish()


OnHead = Callable[[H1Response], None]  # called with a response's head after the read it came in was parsed


class H1Connection(asyncio.Protocol):
    __slots__ = (  # one per stream in flight: no instance dict
        "_arrived",
        "_batch",
        "_body_task",
        "_close_delimited",
        "_complete",
        "_drained",
        "_early",
        "_early_error",
        "_early_size",
        "_head",
        "_head_only",
        "_headers",
        "_in_body",
        "_interim",
        "_keep_alive",
        "_keepalive_timer",
        "_lost",
        "_on_head",
        "_reason",
        "_sink",
        "_trailing",
        "_write_paused",
        "body_sent",
        "idle",
        "loop",
        "parser",
        "pool",
        "reused",
        "transport",
    )

    def __init__(self, pool: H1Pool):
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.idle = False
        self.reused = False
        self._head: asyncio.Future[H1Response] | None = None
        self._sink: BodySink | None = None
        self._early: list[bytes] = []
        self._early_size = 0
        self._batch: list[bytes] = []  # the body pieces of the read being parsed, given to the sink as one
        self._headers: list[tuple[str, str]] = []
        self._reason = ""
        self._interim = 0
        self._in_body = False
        self._complete = False       # the current response's body ended by its own framing
        self._trailing = False       # bytes came after a complete response
        self._close_delimited = False
        self._keep_alive = True
        self._write_paused = False
        self._drained: asyncio.Future[None] | None = None
        self._body_task: asyncio.Task[None] | None = None
        self.body_sent = True
        self._keepalive_timer: asyncio.TimerHandle | None = None
        self._lost = False
        self._early_error: BaseException | None = None
        self._head_only = False  # the request was HEAD: the response has no body, whatever it declares
        self._on_head: OnHead | None = None
        self._arrived: H1Response | None = None  # a head parsed from the read being parsed, for _on_head

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport; both set TCP_NODELAY on every TCP connection
        self.transport = transport  # type: ignore[assignment]  # not cast(): a call per connection

    def data_received(self, data: bytes) -> None:
        if self.idle or self._complete:
            if self.idle:
                log.warning("unsolicited bytes on an idle upstream connection: closed, never reused")
            self._trailing = True
            self.abort()
            return
        try:
            self.parser.feed_data(data)
        except Exception:
            if self._trailing:  # the response before them was whole and is relayed; the connection is not
                self.abort()
                return
            self._parse_failed()
            return
        try:
            arrived = self._arrived
            if arrived is not None:  # a head came in this read: its body bytes of this read wait in _early
                self._arrived = None
                on_head, self._on_head = self._on_head, None
                assert on_head is not None
                on_head(arrived)  # may attach a sink, which takes those bytes with the head
            batch = self._batch
            if batch:  # the body pieces parsed from this read, to the sink in one call: a read that holds
                sink = self._sink  # several chunks (events that came close together) is one client write
                data = batch[0] if len(batch) == 1 else b"".join(batch)
                batch.clear()
                if sink is not None:
                    sink.body(data)
        except Exception:  # the proxy's own failure (a hook's): logged as such, this exchange ends
            log.exception("internal error while relaying an upstream body")
            self._fail(UpstreamError("the proxy failed while relaying the upstream's body"))

    def _parse_failed(self) -> None:
        """Map what stopped the parser (re-raised here) to the error the client is told of."""
        try:
            raise
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamUnavailable("the upstream switched protocols (101) on a request that asked "
                                           "for no upgrade"))
        except (UpstreamError, UpstreamUnavailable) as error:
            self._fail(error)
        except httptools.HttpParserCallbackError as error:
            cause = error.__cause__ or error.__context__
            self._fail(cause if isinstance(cause, UpstreamError | UpstreamUnavailable)
                       else UpstreamUnavailable(f"upstream response rejected: {error}"))
        except httptools.HttpParserError as error:
            self._fail(UpstreamError(f"upstream response was badly framed: {error}") if self._in_body
                       else UpstreamUnavailable(f"upstream sent a malformed response: {error}"))

    def eof_received(self) -> bool | None:
        return None  # close the transport: a half-closed upstream sends nothing more

    def connection_lost(self, exc: BaseException | None) -> None:
        self._lost = True
        self.pool.forget(self)
        if self._keepalive_timer is not None:
            self._keepalive_timer.cancel()
        if self._body_task is not None and not self._body_task.done():
            self._body_task.cancel()
        if self._drained is not None and not self._drained.done():
            self._drained.set_exception(ConnectionResetError("upstream connection lost"))
        if self._complete or self.idle:
            return
        if self._in_body and self._close_delimited and exc is None:
            self._end(None)  # only an orderly FIN completes a body delimited by the close
        elif self._in_body:
            reason = "reset" if exc is not None else "closed"
            self._end(UpstreamError(f"upstream connection was {reason} before the body ended"))
        else:
            self._fail(UpstreamUnavailable("upstream closed the connection before responding"))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    # -- httptools callbacks ---------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._complete or self.idle:  # a second response in the read of the first (which may already
            # have been released and parked, by a sink that ends in its callback): never taken as one
            self._trailing = True
            raise UpstreamUnavailable("bytes after a complete response")
        self._headers = []
        self._reason = ""

    def on_status(self, reason: bytes) -> None:
        self._reason += reason.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._interim += 1
            if self._interim > MAX_INTERIM:
                raise UpstreamUnavailable(f"the upstream sent over {MAX_INTERIM} interim (1xx) responses")
            return
        headers = CIMultiDictProxy(CIMultiDict(self._headers))
        self._headers = []  # not kept for the stream's life
        framed = "Content-Length" in headers or "chunked" in headers.get("Transfer-Encoding", "").lower()
        self._close_delimited = not framed and status not in _BODYLESS
        self._keep_alive = self.parser.should_keep_alive() and not self._close_delimited
        self._in_body = True
        head = self._head
        if head is not None and not head.done():
            response = H1Response(self, status, self._reason, headers)
            head.set_result(response)
            if self._on_head is not None:
                self._arrived = response  # told once this read is parsed (data_received)
        if self._head_only:  # the parser cannot be told a HEAD answer has no body: end it here, never reuse
            self._keep_alive = False
            self._complete = True
            self._end(None)

    def on_body(self, body: bytes) -> None:
        if self._complete:
            return  # a body where none may be (HEAD): not relayed, and the connection is not reused
        if self._sink is not None:
            self._batch.append(body)  # one write for all the events of one read, not a write per chunk
            return
        self._early.append(body)
        self._early_size += len(body)
        if self._early_size > EARLY_BODY and self.transport is not None:
            self.transport.pause_reading()  # bounded until the relay attaches

    def on_message_complete(self) -> None:
        if not self._in_body:
            return  # an interim response ended, or a HEAD answer already ended
        self._complete = True
        self._end(None)

    # -- the exchange ---------------------------------------------------------------------------
    async def exchange(self, head: bytes, body: AsyncIterable[bytes] | None, chunked: bool,
                       timeouts: Timeouts, head_only: bool = False, on_head: OnHead | None = None) -> H1Response:
        """Send one request; returns when the response head has arrived, or raises ``UpstreamTimeout``
        after ``timeouts.idle`` (a timer on the head's future: no task cancellation per request).
        ``on_head`` is called with the head in the callback that parsed it, before the caller's task
        runs again: the response can start there (``proxy``), its first bytes with it."""
        head_future: asyncio.Future[H1Response] = self.loop.create_future()
        self._head = head_future
        self._head_only = head_only
        self._on_head = on_head
        assert self.transport is not None
        self.transport.write(head)
        if body is not None:
            self.body_sent = False
            self._body_task = self.loop.create_task(self._send_body(body, chunked))
        timer = self.loop.call_later(timeouts.idle, self._head_timed_out, timeouts.idle) if timeouts.idle else None
        try:
            return await head_future
        except BaseException:
            self.abort()
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _head_timed_out(self, idle: float) -> None:
        head = self._head
        if head is not None and not head.done():
            head.set_exception(UpstreamTimeout(f"{self.pool.where} sent no response headers within {idle:g}s"))

    async def _send_body(self, body: AsyncIterable[bytes], chunked: bool) -> None:
        try:
            async for chunk in body:
                if not chunk or self.transport is None:
                    continue
                self.transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                if self._write_paused:
                    self._drained = self.loop.create_future()
                    await self._drained
            if chunked and self.transport is not None:
                self.transport.write(b"0\r\n\r\n")
            self.body_sent = True
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the client's body failed (413, the client left): end this exchange
            self._fail(error)

    def _fail(self, error: BaseException) -> None:
        head = self._head
        if head is not None and not head.done():
            head.set_exception(error)
            self.abort()
            return
        self._end(error)
        self.abort()

    def _end(self, error: BaseException | None) -> None:
        if not self._in_body:
            return
        self._in_body = False
        sink, self._sink = self._sink, None
        batch = self._batch
        last = batch[0] if len(batch) == 1 else b"".join(batch)
        batch.clear()
        if sink is not None:
            sink.finished(error, last)
        else:
            self._early.append(b"")  # the end, for a sink attached later
            self._early_error = error

    def attach(self, sink: BodySink) -> None:
        held_back = self._early_size > EARLY_BODY
        early, self._early, self._early_size = self._early, [], 0
        ended = bool(early) and early[-1] == b""
        if len(early) > ended:  # what came with the head, in one piece (as a read's pieces go)
            sink.body(b"".join(early))
        if ended:
            sink.finished(self._early_error)
            return
        self._sink = sink
        if held_back:  # reading paused for the body held before the sink came; the sink's own pause stays
            self.resume_reading()

    def pause_reading(self) -> None:
        if self.transport is not None and not self._lost:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self._lost:
            self.transport.resume_reading()

    def abort(self) -> None:
        self._sink = None
        self._on_head = self._arrived = None
        if self._body_task is not None and not self._body_task.done():
            self._body_task.cancel()
        if self.transport is not None and not self._lost:
            self.transport.abort()
        self.pool.forget(self)

    def finish(self) -> None:
        """Back to the pool when the exchange was clean and whole; else closed."""
        reusable = (self._complete and self._keep_alive and self.body_sent and not self._trailing
                    and not self._lost and self.transport is not None and not self.transport.is_closing())
        if not reusable:
            self.abort()
            return
        self._complete = False
        self._head = None
        self._on_head = self._arrived = None
        self._interim = 0
        self.reused = True
        self.pool.put(self)

    def park(self) -> None:
        """Idle in the pool: any byte now is unsolicited; closed after ``KEEPALIVE`` unused."""
        self.idle = True
        self._keepalive_timer = self.loop.call_later(KEEPALIVE, self.abort)
        self.resume_reading()

    def unpark(self) -> None:
        self.idle = False
        if self._keepalive_timer is not None:
            self._keepalive_timer.cancel()
            self._keepalive_timer = None


def request_head(out: OutboundRequest, target: str, host: str) -> tuple[bytes, bool]:
    """The request line and headers, and whether the body goes chunked."""
    headers = out.headers
    chunked = out.body is not None and "Content-Length" not in headers
    lines = [f"{out.method} {target} HTTP/1.1\r\n"]
    if "Host" not in headers:
        lines.append(f"Host: {host}\r\n")
    lines += [f"{name}: {value}\r\n" for name, value in headers.items()]
    if chunked:
        lines.append("Transfer-Encoding: chunked\r\n")
    elif out.body is None and "Content-Length" not in headers and out.method in ("POST", "PUT", "PATCH"):
        lines.append("Content-Length: 0\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("utf-8", "surrogateescape"), chunked
