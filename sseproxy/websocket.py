"""The WebSocket relay: the client's handshake is checked, the upstream's is made (with the route's
timeouts, and first, so its negotiated subprotocol can be passed back), then two pumps carry text,
binary, ping, pong and the close code and reason both ways; when either side closes or fails, so
does the other.

Memory: aiohttp holds each message whole before it is relayed. ``websocket.max_message`` bounds one
message; a frame over it is refused from its header, before its payload is read, and both sides are
closed with 1009. ``websocket.max_total`` bounds the messages held at once across every relay while
they wait for a slow receiver; a message that would pass it closes its relay with 1013 (try again later).

Order of closing: the client's side is closed last, by the handler itself, with no ``await`` after
it, because aiohttp cancels a handler as soon as its client's connection closes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import enum
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from aiohttp import WSMsgType, web
from yarl import URL

from .errors import BadRequest, Outcome, UpstreamUnavailable
from .headers import Headers
from .upstream import OutboundRequest, Pools, UpstreamTarget, mapped_errors, upstream_url, with_failover

log = logging.getLogger("sseproxy")

NORMAL = 1000
GOING_AWAY = 1001
MESSAGE_TOO_BIG = 1009
UPSTREAM_FAILED = 1011
TRY_AGAIN_LATER = 1013
CLOSE_TIMEOUT = 5.0  # bounds the wait for the other side's answer to a close frame
# Headers the WebSocket client makes itself for the upstream handshake.
HANDSHAKE_HEADERS = ("Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Protocol",
                     "Sec-WebSocket-Extensions")
VERSIONS = ("13", "8", "7")  # those aiohttp's WebSocketResponse accepts from the client


class Side(enum.Enum):
    CLIENT = "client"
    UPSTREAM = "upstream"
    PROXY = "proxy"  # a bound or shutdown


class Limits(Protocol):
    """``runtime.WebSocketLimits``, or anything with its two sizes."""

    @property
    def max_message(self) -> int: ...

    @property
    def max_total(self) -> int: ...


def is_upgrade(headers: Headers) -> bool:
    return headers.get("Upgrade", "").lower() == "websocket"


def subprotocols(headers: Headers) -> list[str]:
    return [p.strip() for v in headers.getall("Sec-WebSocket-Protocol", ()) for p in v.split(",") if p.strip()]


def check_handshake(method: str, headers: Headers) -> None:
    """Refuse, before any upstream is contacted, a client handshake that aiohttp would refuse only
    once the upstream WebSocket is open (RFC 6455 section 4.2.1, as aiohttp's ``_handshake`` checks it)."""
    if method != "GET":
        raise BadRequest(f"a WebSocket handshake is a GET, not {method}")
    tokens = {t.strip().lower() for v in headers.getall("Connection", ()) for t in v.split(",")}
    if "upgrade" not in tokens:
        raise BadRequest("a WebSocket handshake needs Connection: Upgrade")
    if headers.get("Sec-WebSocket-Version", "") not in VERSIONS:
        raise BadRequest("a WebSocket handshake needs Sec-WebSocket-Version: 13")
    try:
        valid = len(base64.b64decode(headers.get("Sec-WebSocket-Key", ""), validate=True)) == 16
    except binascii.Error:
        valid = False
    if not valid:
        raise BadRequest("a WebSocket handshake needs a Sec-WebSocket-Key of 16 bytes in base64")


async def connect(pools: Pools, target: UpstreamTarget, out: OutboundRequest, *, protocols: list[str],
                  max_message: int) -> aiohttp.ClientWebSocketResponse:
    """The upstream WebSocket, trying the next upstream while connecting fails or times out."""
    headers, timeouts = out.headers, target.timeouts
    for name in HANDSHAKE_HEADERS:
        headers.popall(name, None)

    async def attempt(base: URL, path_qs: str) -> aiohttp.ClientWebSocketResponse:
        url = upstream_url(base, path_qs)
        pool = pools.session(base)
        assert pool.connector is not None
        # ws_connect takes no ClientTimeout for its handshake, only its session's, and follows redirects:
        # the handshake goes through a session of its own, over the pool's connector, with the route's
        # connect and idle, and a trace that refuses a redirect before it is followed.
        refuse = aiohttp.TraceConfig()
        refuse.on_request_redirect.append(_refuse_redirect)
        with mapped_errors(url, timeouts):
            async with aiohttp.ClientSession(
                    connector=pool.connector, connector_owner=False, timeout=timeouts.client_timeout(),
                    cookie_jar=pool.cookie_jar, skip_auto_headers=pool.skip_auto_headers,
                    trace_configs=[refuse]) as session:
                try:
                    return await session.ws_connect(
                        url, protocols=protocols, headers=headers, autoping=False, autoclose=False,
                        max_msg_size=max_message + 1,  # aiohttp refuses a message of max_msg_size itself
                        timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT))
                except aiohttp.WSServerHandshakeError as e:
                    raise UpstreamUnavailable(f"upstream refused the WebSocket handshake with {e.status}") from None

    return await with_failover(target, out.path, out.query, attempt)


async def _refuse_redirect(session: aiohttp.ClientSession, context: object,
                           params: aiohttp.TraceRequestRedirectParams) -> None:
    """As for HTTP, where the redirect is relayed, never followed: injected headers must not travel
    to wherever the upstream points."""
    params.response.close()
    raise UpstreamUnavailable(f"upstream refused the WebSocket handshake with {params.response.status} "
                              "(a redirect, which the proxy does not follow)")


WebSocket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


@dataclass
class WebSocketStats:
    """What one relay carried and how it ended. A message reassembled from fragments is one frame;
    pings and pongs are frames too."""

    frames_to_upstream: int = 0
    frames_to_client: int = 0
    bytes_to_upstream: int = 0
    bytes_to_client: int = 0
    closed_by: Side | None = None   # who ended it first
    close_code: int | None = None   # the code it ended with; None when a connection was lost
    outcome: Outcome = Outcome.CLIENT_CLOSED
    error: str | None = None        # why the proxy ended it, or what failed

    @property
    def frames(self) -> int:
        return self.frames_to_upstream + self.frames_to_client


def _size(data: str | bytes) -> int:
    if isinstance(data, bytes):
        return len(data)
    return len(data) if data.isascii() else len(data.encode())


class WebSocketRelay:
    """One client WebSocket and its upstream: ``run`` relays until either ends, then closes both."""

    def __init__(self, upstream: aiohttp.ClientWebSocketResponse, limits: Limits, relays: WebSocketRelays):
        self.upstream = upstream
        self.client = web.WebSocketResponse(protocols=[upstream.protocol] if upstream.protocol else (),
                                            autoping=False, autoclose=False, max_msg_size=limits.max_message + 1,
                                            timeout=CLOSE_TIMEOUT)
        self.stats = WebSocketStats()
        self._limits = limits
        self._relays = relays
        self._close_with = (GOING_AWAY, "")  # the code and reason both sides are closed with
        self._pumps: list[asyncio.Task[None]] = []

    async def run(self, request: web.BaseRequest) -> web.WebSocketResponse:
        self._relays.add(self)
        try:
            await self.client.prepare(request)
            if self.stats.closed_by is None:  # not stopped by shutdown meanwhile
                self._pumps = [asyncio.create_task(self._pump(self.client, self.upstream, Side.CLIENT)),
                               asyncio.create_task(self._pump(self.upstream, self.client, Side.UPSTREAM))]
                await asyncio.wait(self._pumps, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            if not self._closed_under_us(request):
                self._end(Side.CLIENT, None, (GOING_AWAY, "client went away"), Outcome.CLIENT_CLOSED)
                raise
        except (ConnectionError, aiohttp.ClientError) as e:
            self._end(Side.CLIENT, None, (GOING_AWAY, "client went away"), Outcome.CLIENT_CLOSED, repr(e))
        finally:
            for pump in self._pumps:
                pump.cancel()
            await asyncio.gather(*self._pumps, return_exceptions=True)
            await self._close_both(request)
            self._relays.discard(self)
        return self.client

    def stop(self, code: int, reason: str) -> None:
        """Close both sides with ``code`` (shutdown): the pumps stop, and ``run`` closes and returns."""
        self._end(Side.PROXY, code, (code, reason), Outcome.SHUTDOWN, reason)
        for pump in self._pumps:
            pump.cancel()

    def _end(self, by: Side, code: int | None, close_with: tuple[int, str], outcome: Outcome,
             error: str | None = None) -> None:
        """Record how the relay ended; the first end is the one that counts."""
        if self.stats.closed_by is None:
            self.stats.closed_by, self.stats.close_code = by, code
            self.stats.outcome, self.stats.error = outcome, error
            self._close_with = close_with

    async def _close_both(self, request: web.BaseRequest) -> None:
        """The upstream in the background (its answer may take ``CLOSE_TIMEOUT``, and the client need
        not wait for it), then the client, last of all (see the module's docstring)."""
        code, reason = self._close_with
        self._relays.in_background(self._close_upstream(code, reason))
        if not self.client.prepared:
            return
        try:
            await self.client.close(code=code, message=reason.encode())
        except (ConnectionError, aiohttp.ClientError):
            pass
        except asyncio.CancelledError:
            if not self._closed_under_us(request):
                raise

    def _closed_under_us(self, request: web.BaseRequest) -> bool:
        """Whether a cancellation is only aiohttp noticing that the client's connection closed after
        the relay had ended; if so it is absorbed (uncancelled), so that the relay's outcome stands.

        aiohttp cancels the handler once the client's connection closes. The close handshake does
        that: a client may hang up the moment it has answered a close (under uvloop its answer and its
        FIN arrive together), and aiohttp closes it itself after a message over ``max_message``.
        """
        if self.stats.closed_by is None:
            return False  # the relay was still running: the client left mid-relay
        if request.transport is not None and not request.transport.is_closing():
            return False  # the connection is open: a cancellation from elsewhere
        task = asyncio.current_task()
        return task is not None and task.uncancel() == 0

    async def _close_upstream(self, code: int, reason: str) -> None:
        with contextlib.suppress(ConnectionError, aiohttp.ClientError, TimeoutError):
            await asyncio.wait_for(self.upstream.close(code=code, message=reason.encode()), CLOSE_TIMEOUT)

    async def _pump(self, source: WebSocket, sink: WebSocket, side: Side) -> None:
        """Forward every message from ``source`` (the ``side`` end) to ``sink``, until ``source``
        closes or fails, or ``sink`` fails; record how it ended."""
        try:
            while await self._forward(await source.receive(), sink, side):
                pass
        except (ConnectionError, aiohttp.ClientError) as e:  # writing to the sink failed
            if side is Side.CLIENT:
                self._end(Side.UPSTREAM, None, (UPSTREAM_FAILED, "upstream connection lost"),
                          Outcome.UPSTREAM_ERROR, f"upstream connection lost: {e.__class__.__name__}")
            else:
                self._end(Side.CLIENT, None, (GOING_AWAY, "client went away"), Outcome.CLIENT_CLOSED)

    async def _forward(self, msg: aiohttp.WSMessage, sink: WebSocket, side: Side) -> bool:
        """Relay one message; False once the relay has ended."""
        if msg.type is WSMsgType.TEXT or msg.type is WSMsgType.BINARY:
            return await self._forward_data(msg, sink, side)
        if msg.type is WSMsgType.PING or msg.type is WSMsgType.PONG:
            await (sink.ping(msg.data) if msg.type is WSMsgType.PING else sink.pong(msg.data))
            self._count(side, len(msg.data))
            return True
        if msg.type is WSMsgType.CLOSE:
            code = msg.data or NORMAL
            failed = Outcome.CLIENT_CLOSED if side is Side.CLIENT else Outcome.UPSTREAM_ERROR
            self._end(side, code, (code, msg.extra or ""), Outcome.OK if code in (NORMAL, GOING_AWAY) else failed)
        elif msg.type is WSMsgType.ERROR and isinstance(msg.data, aiohttp.WebSocketError):
            # aiohttp has closed the source with the error's code (1009 for a message over max_message)
            code = int(msg.data.code)
            self._end(Side.PROXY, code, (code, "message too big" if code == MESSAGE_TOO_BIG else "protocol error"),
                      Outcome.REFUSED if side is Side.CLIENT else Outcome.UPSTREAM_ERROR,
                      f"{side.value} WebSocket: {msg.data}")
        elif side is Side.CLIENT:  # CLOSING (being closed), CLOSED or ERROR: the connection was lost
            self._end(side, None, (GOING_AWAY, "client went away"), Outcome.CLIENT_CLOSED)
        else:
            self._end(side, None, (UPSTREAM_FAILED, "upstream connection lost"), Outcome.UPSTREAM_ERROR,
                      "upstream WebSocket connection lost")
        return False

    async def _forward_data(self, msg: aiohttp.WSMessage, sink: WebSocket, side: Side) -> bool:
        size = _size(msg.data)
        if not self._relays.hold(size, self._limits.max_total):
            self._end(Side.PROXY, TRY_AGAIN_LATER, (TRY_AGAIN_LATER, "proxy busy, try again later"),
                      Outcome.REFUSED if side is Side.CLIENT else Outcome.UPSTREAM_ERROR,
                      f"a {size}-byte message from the {side.value} would take the WebSocket messages held "
                      f"over websocket.max_total ({self._limits.max_total} bytes)")
            return False
        try:
            await (sink.send_str(msg.data) if msg.type is WSMsgType.TEXT else sink.send_bytes(msg.data))
        finally:
            self._relays.release(size)  # sent: the message is no longer held
        self._count(side, size)
        return True

    def _count(self, side: Side, size: int) -> None:
        if side is Side.CLIENT:
            self.stats.frames_to_upstream += 1
            self.stats.bytes_to_upstream += size
        else:
            self.stats.frames_to_client += 1
            self.stats.bytes_to_client += size


class WebSocketRelays:
    """The relays open now, so that shutdown can close them all with 1001; and the bytes of the
    messages they hold while a receiver is slow, bounded across all of them by ``max_total``."""

    def __init__(self) -> None:
        self._open: set[WebSocketRelay] = set()
        self._closing: set[asyncio.Task[None]] = set()  # upstream sides still closing
        self._none_open = asyncio.Event()
        self._none_open.set()
        self.held = 0  # bytes of messages received and not yet handed to the other side

    def __len__(self) -> int:
        return len(self._open)

    def add(self, relay: WebSocketRelay) -> None:
        self._open.add(relay)
        self._none_open.clear()

    def discard(self, relay: WebSocketRelay) -> None:
        self._open.discard(relay)
        if not self._open:
            self._none_open.set()

    def in_background(self, closing: Coroutine[None, None, None]) -> None:
        task = asyncio.get_running_loop().create_task(closing)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def hold(self, size: int, limit: int) -> bool:
        """Count ``size`` more bytes held, unless that would pass ``limit``."""
        if self.held + size > limit:
            return False
        self.held += size
        return True

    def release(self, size: int) -> None:
        self.held -= size

    async def close_all(self, code: int = GOING_AWAY, reason: str = "server shutting down",
                        timeout: float = CLOSE_TIMEOUT) -> int:
        """Close both sides of every open relay with ``code``, and wait up to ``timeout`` for their
        close handshakes; returns how many there were."""
        relays = list(self._open)
        for relay in relays:
            relay.stop(code, reason)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._none_open.wait()
                await asyncio.gather(*self._closing)
        return len(relays)
