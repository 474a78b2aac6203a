"""Every place sseproxy goes beneath aiohttp's public API, in one room.

Each hook here has a test in ``tests/test_aiohttp_internals.py`` that fails loudly when an aiohttp
release changes what it relies on, so an upgrade breaks this file, never the product silently.
The aiohttp range in ``pyproject.toml`` is the one these were tested against.

- ``ProxyProtocol``/``ProxyServer``: ``web_protocol.RequestHandler`` subclassed for the
  request-head deadline, made with ``web.Server``'s private ``_loop`` and ``_kwargs``. The listening
  socket is ``h1server``'s; this server takes the connections it hands over (an Upgrade).
- ``ServerProtocol``/``PreparableRequest``: ``h1server`` answers with aiohttp's ``StreamResponse``
  over aiohttp's ``StreamWriter``, on a protocol that is aiohttp's ``BaseProtocol`` (the write-side
  flow control ``StreamWriter.drain`` waits on); ``prepare()`` reads the private ``_payload_writer``
  and ``_prepare_hook`` of the request it is given.
- ``send_100_continue``: the interim response written raw on ``request.writer``.
- ``fail_body_when_connection_drops``: the client protocol's ``closed`` future.
- ``stop_read_timeout``: the client protocol's ``read_timeout`` and its armed timer.
- ``GuardedConnector``/``GuardedResponseHandler``: ``TCPConnector``'s private ``_factory``,
  ``_release`` and ``_get``, so a pooled connection that turns readable while idle is closed, and
  the client protocol's ``feed_data`` and ``set_response_params``, to bound interim (1xx) responses.
- ``ProxyProtocol.handle_error``: the server protocol's answer to a request the parser refused.
- ``HeldHeadResponse``/``take_head``: ``StreamResponse._send_headers_immediately`` (aiohttp's own
  ``Response`` turns it off) and the writer's buffered head, so the callback relay sends the head
  with the first body bytes in one write.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.client_proto import ResponseHandler
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.http_writer import StreamWriter
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger("sseproxy")

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
MAX_INTERIM = 5  # 1xx responses accepted before the final one (Go's limit): bounds memory and time


@dataclass(frozen=True)
class ParserRefusal:
    """A request refused before it reached the handler: its head could not be parsed or was too large."""

    status: int
    type: str
    message: str
    client: str | None


OnRefused = Callable[[ParserRefusal], None]


class FlowListener(Protocol):
    """A relay that writes to the client's transport itself and follows its flow control."""

    def client_paused(self) -> None: ...
    def client_resumed(self) -> None: ...
HEAD_TOO_LARGE = b"Request Header Fields Too Large"


def refusal_bytes(refusal: ParserRefusal) -> bytes:
    body = json.dumps({"error": {"type": refusal.type, "message": refusal.message, "route": None}}).encode()
    reason = HEAD_TOO_LARGE if refusal.status == 431 else b"Bad Request"
    return (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
            % (refusal.status, reason, len(body)) + body)


class HeadWatched(Protocol):
    def head_too_slow(self) -> None: ...


class HeadDeadlines:
    """Every connection's request-head deadline on one timer, not one timer per connection: arming
    is a dict write, and a sweep every quarter of ``header_timeout`` (at most once a second) closes
    the connections past theirs. All deadlines are ``timeout`` after arming, so the dict's insertion
    order is their order and a sweep stops at the first one still running."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float):
        self._loop = loop
        self.timeout = timeout
        self._every = min(1.0, max(0.02, timeout / 4))
        self._waiting: dict[HeadWatched, float] = {}
        self._sweep_handle: asyncio.TimerHandle | None = None

    def arm(self, protocol: HeadWatched) -> float | None:
        if self.timeout <= 0:
            return None
        deadline = self._loop.time() + self.timeout
        self._waiting.pop(protocol, None)
        self._waiting[protocol] = deadline  # at the end: the latest deadline
        if self._sweep_handle is None:
            self._sweep_handle = self._loop.call_later(self._every, self._sweep)
        return deadline

    def disarm(self, protocol: HeadWatched) -> None:
        self._waiting.pop(protocol, None)

    def _sweep(self) -> None:
        self._sweep_handle = None
        now = self._loop.time()
        overdue = []
        for protocol, deadline in self._waiting.items():
            if deadline > now:
                break
            overdue.append(protocol)
        for protocol in overdue:
            del self._waiting[protocol]
            protocol.head_too_slow()
        if self._waiting:
            self._sweep_handle = self._loop.call_later(self._every, self._sweep)


class ServerProtocol(BaseProtocol):
    """aiohttp's ``BaseProtocol``: ``pause_writing``/``resume_writing`` and the ``_drain_helper`` that
    ``StreamWriter.drain`` awaits, with those pauses passed on to the relay that writes to this client
    directly (``flow``, which the subclass holds). Its reading side assumes aiohttp's parser, so a
    subclass with a parser of its own overrides ``pause_reading``/``resume_reading``."""

    __slots__ = ()
    flow: FlowListener | None

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.flow is not None:
            self.flow.client_paused()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.flow is not None:
            self.flow.client_resumed()


class ProxyProtocol(RequestHandler, ServerProtocol):
    """The server protocol: a deadline and a size cap for the request head, and one log line (not a
    traceback) for a request the parser refused.

    The deadline is armed when the connection opens and again when a response ends (waiting for
    the next request on a kept-alive connection); the handler disarms it when a head is complete.
    While a head is awaited, its first ``max_head`` bytes are kept to find its end: a head that
    runs past the cap is answered 431 and the connection closed, so held-open partial heads cost
    at most ``max_head`` each.
    """

    def __init__(self, manager: web.Server, *, deadlines: HeadDeadlines, max_head: int, on_refused: OnRefused,
                 **kwargs: Any):
        super().__init__(manager, **kwargs)
        self._deadlines = deadlines
        self._max_head = max_head
        self._on_refused = on_refused
        self._deadline: float | None = None  # when the head awaited now is due; None: none is awaited
        self._head: bytearray | None = bytearray()  # None: the head is complete, bytes are not watched
        self.flow: FlowListener | None = None       # a relay writing to this client directly

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.arm_head_deadline()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.head_received()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        head = self._head
        if head is not None:
            head += data[: self._max_head + 4 - len(head)]
            if b"\r\n\r\n" in head or b"\n\n" in head:
                self._head = None
            elif len(head) > self._max_head:
                self._refuse_head()
                return
        super().data_received(data)

    def _refuse_head(self) -> None:
        self._head = None
        self.head_received()
        refusal = ParserRefusal(431, "header_too_large", f"the request head is over max_header_size "
                                f"({self._max_head} bytes)", self._peer())
        self._on_refused(refusal)
        if self.transport is not None:
            self.transport.write(refusal_bytes(refusal))
            self.transport.close()
        self.force_close()

    def _peer(self) -> str | None:
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        return str(peer[0]) if isinstance(peer, tuple) else None

    def arm_head_deadline(self) -> None:
        self._head = bytearray()
        self._deadline = self._deadlines.arm(self)

    def head_received(self) -> None:
        if self._deadline is not None:
            self._deadlines.disarm(self)
            self._deadline = None

    def head_too_slow(self) -> None:
        self._deadline = None
        if self.transport is not None:
            log.debug("closing a connection whose request head took over %ss", self._deadlines.timeout)
            self.transport.close()

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """A head the parser refused: a JSON 400 (431 for an over-long line) and one access-log line
        with outcome ``refused``, never a traceback (which could carry a token from the bad header)."""
        if not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        too_large = isinstance(exc, LineTooLong)
        refusal = ParserRefusal(431 if too_large else 400, "header_too_large" if too_large else "bad_request",
                                f"malformed request: {exc.message}", request.remote)
        self._on_refused(refusal)
        body = {"error": {"type": refusal.type, "message": refusal.message, "route": None}}
        response = web.json_response(body, status=refusal.status)
        response.force_close()
        return response


class ProxyServer(web.Server):
    """``web.Server`` whose connections are ``ProxyProtocol``s and whose handlers are cancelled when
    the client hangs up (without that, a handler waiting on a silent upstream never learns)."""

    def __init__(self, handler: Handler, *, header_timeout: float, max_head: int, on_refused: OnRefused,
                 **kwargs: Any):
        line = min(8190, max_head)  # aiohttp's own per-line caps, never above the whole head's
        # tcp_keepalive off, as nginx's default: a probe after two hours of silence finds nothing a
        # heartbeat would not, and costs a system call per connection
        super().__init__(self._serve, handler_cancellation=True, access_log=None, max_line_size=line,
                         max_field_size=line, tcp_keepalive=False, **kwargs)
        self._proxy = handler
        self._deadlines = HeadDeadlines(self._loop, header_timeout)
        self._max_head = max_head
        self._on_refused = on_refused

    async def _serve(self, request: web.BaseRequest) -> web.StreamResponse:
        protocol = request.protocol
        if isinstance(protocol, ProxyProtocol):
            protocol.head_received()
        try:
            return await self._proxy(request)
        finally:
            if isinstance(protocol, ProxyProtocol) and request.transport is not None:
                protocol.arm_head_deadline()

    @property
    def deadlines(self) -> HeadDeadlines:
        return self._deadlines

    def __call__(self) -> RequestHandler:
        return ProxyProtocol(self, loop=self._loop, deadlines=self._deadlines, max_head=self._max_head,
                             on_refused=self._on_refused, **self._kwargs)


async def send_100_continue(request: web.BaseRequest) -> None:
    """``100 Continue`` for a client that waits for it before sending its body: the proxy streams
    the body upstream itself, so it answers at once. HTTP/1.0 has no interim responses."""
    if request.version >= aiohttp.HttpVersion11 and request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")


def _protocol(response: aiohttp.ClientResponse) -> ResponseHandler | None:
    return response.connection.protocol if response.connection is not None else None


def fail_body_when_connection_drops(response: aiohttp.ClientResponse) -> None:
    """Make a body read fail if the upstream connection is lost before the body ended.

    aiohttp closes the connection on a malformed chunk but leaves the body reader waiting for
    ever (and drops the read timeout); this ends that wait with ``ClientPayloadError``.
    """
    protocol = _protocol(response)
    closed = protocol.closed if protocol is not None else None
    content = response.content

    def on_closed(future: asyncio.Future[None]) -> None:
        if not future.cancelled():
            future.exception()  # retrieved: the body reader reports the failure instead
        if not content.is_eof() and content.exception() is None:
            content.set_exception(aiohttp.ClientPayloadError("upstream connection lost mid-body"))

    if closed is not None:
        closed.add_done_callback(on_closed)


def upstream_protocol(response: aiohttp.ClientResponse) -> GuardedResponseHandler | None:
    """The guarded protocol under ``response``, kept by the relay to ask how its body ended."""
    protocol = _protocol(response)
    return protocol if isinstance(protocol, GuardedResponseHandler) else None


def stop_read_timeout(response: aiohttp.ClientResponse) -> None:
    """Stop aiohttp's per-read ``sock_read`` timer once the response head is in: the relay keeps
    its own idle deadline, which costs nothing per chunk."""
    protocol = _protocol(response)
    if protocol is not None:
        protocol.read_timeout = None
        protocol._drop_timeout()


class TooManyInterimResponses(aiohttp.ClientError):
    """The upstream sent more than ``MAX_INTERIM`` 1xx responses before its final one."""


class GuardedResponseHandler(ResponseHandler):
    """The client protocol, guarded: bytes arriving while the connection sits idle in the pool are
    an unsolicited response (or the tail of one): the connection is closed, never handed to the
    next request, whose client would get them as its answer (as Go and nginx do). And at most
    ``MAX_INTERIM`` 1xx responses are taken before the final one."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.idle = False
        self._interim = 0
        self.reset_mid_body = False  # the connection was lost (not closed in order) while a body was being read

    def connection_lost(self, exc: BaseException | None) -> None:
        # aiohttp ends a body delimited by the connection's close cleanly whether the close was a
        # FIN or a reset; only a FIN completes such a body, so a reset is remembered here
        if exc is not None and self._payload is not None and not self._payload.is_eof():
            self.reset_mid_body = True
        super().connection_lost(exc)

    def set_response_params(self, *args: Any, **kwargs: Any) -> None:
        self._interim = 0
        super().set_response_params(*args, **kwargs)

    def data_received(self, data: bytes) -> None:
        if self.idle and data:
            log.warning("unsolicited bytes on an idle upstream connection: closed, never reused")
            self.idle = False
            self.close()
            return
        super().data_received(data)

    def feed_data(self, data: Any, size: int = 0) -> None:
        message = data[0] if isinstance(data, tuple) else None
        code = getattr(message, "code", None)
        if isinstance(code, int) and 100 <= code < 200 and code != 101:
            self._interim += 1
            if self._interim > MAX_INTERIM:
                if self._interim == MAX_INTERIM + 1:
                    self.set_exception(TooManyInterimResponses(f"over {MAX_INTERIM} interim (1xx) responses"))
                    if self.transport is not None:
                        self.transport.close()
                return
        super().feed_data(data, size)


class GuardedConnector(aiohttp.TCPConnector):
    """A ``TCPConnector`` whose connections are ``GuardedResponseHandler``s, told when they are
    idle in the pool and when they are taken out of it."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._factory = functools.partial(GuardedResponseHandler, loop=self._loop)  # type: ignore[assignment]

    def _release(self, key: Any, protocol: ResponseHandler, *, should_close: bool = False) -> None:
        super()._release(key, protocol, should_close=should_close)
        if isinstance(protocol, GuardedResponseHandler) and protocol.transport is not None:
            protocol.idle = True  # pooled: any byte from now on is unsolicited

    async def _get(self, key: Any, traces: list[Any]) -> Any:
        connection = await super()._get(key, traces)
        if connection is not None and isinstance(connection.protocol, GuardedResponseHandler):
            connection.protocol.idle = False
        return connection


class HeldHeadResponse(web.StreamResponse):
    """A ``StreamResponse`` whose ``prepare()`` serialises the head but holds it back, as aiohttp's
    ``Response`` does: the callback relay takes it (``take_head``) and sends it with the first body
    bytes when the upstream's first event came with its head: one write and one packet, not two."""

    _send_headers_immediately = False


def take_head(response: web.StreamResponse) -> bytes:
    """The head ``prepare()`` held back, marked as sent: the caller writes it, before any body byte."""
    writer = response._payload_writer
    if not isinstance(writer, StreamWriter) or writer._headers_written:
        return b""
    head: bytes = writer._headers_buf or b""
    writer._headers_buf = None
    writer._headers_written = True
    return head


def prepare_now(response: HeldHeadResponse, request: Any) -> None:
    """``await response.prepare(request)``, from a callback that cannot await: for a response that
    holds its head back, prepare() writes nothing and waits for nothing (no drain, no signal handler
    on this request), so its coroutine finishes in one step; one that would suspend is an error."""
    step = response.prepare(request)
    try:
        step.send(None)
    except StopIteration:
        return
    step.close()
    raise RuntimeError("prepare() of a held head waited for something")


def mark_ended(response: web.StreamResponse) -> None:
    """The caller wrote the body's end itself (the callback relay: the last chunk with the last
    events, one write): the response counts as ended, and its own ``write_eof()`` writes nothing."""
    writer = response._payload_writer
    if isinstance(writer, StreamWriter):
        writer._eof = True
    response._eof_sent = True
    response._req = None
    response._payload_writer = None


class PreparableRequest:
    """The part of a request ``StreamResponse.prepare()`` reads beyond the public API: the writer the
    response goes out on (``_payload_writer``) and the hook for the app's ``on_response_prepare``
    signals (none here). It also reads ``method``, ``version``, ``keep_alive`` and ``headers``."""

    __slots__ = ("_payload_writer",)

    def __init__(self, protocol: ServerProtocol, loop: asyncio.AbstractEventLoop):
        self._payload_writer = StreamWriter(protocol, loop)

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        return None
