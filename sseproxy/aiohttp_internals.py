"""Every place sseproxy goes beneath aiohttp's public API, in one room.

Each hook here has a test in ``tests/test_aiohttp_internals.py`` that fails loudly when an aiohttp
release changes what it relies on, so an upgrade breaks this file, never the product silently.
The aiohttp range in ``pyproject.toml`` is the one these were tested against.

- ``HeadDeadlineProtocol``/``ProxyServer``: ``web_protocol.RequestHandler`` subclassed for the
  request-head deadline, made with ``web.Server``'s private ``_loop`` and ``_kwargs``.
- ``send_100_continue``: the interim response written raw on ``request.writer``.
- ``fail_body_when_connection_drops``: the client protocol's ``closed`` future.
- ``stop_read_timeout``: the client protocol's ``read_timeout`` and its armed timer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.client_proto import ResponseHandler
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger("sseproxy")

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class HeadDeadlineProtocol(RequestHandler):
    """Closes a connection whose request head has not fully arrived within ``header_timeout``.

    The deadline is armed when the connection opens and again when a response ends (waiting for
    the next request on a kept-alive connection); the handler disarms it when a head is complete.
    """

    def __init__(self, manager: web.Server, *, header_timeout: float, **kwargs: Any):
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.arm_head_deadline()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.head_received()
        super().connection_lost(exc)

    def arm_head_deadline(self) -> None:
        self.head_received()
        if self._header_timeout > 0:
            self._deadline = self._loop.call_later(self._header_timeout, self._head_too_slow)

    def head_received(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_too_slow(self) -> None:
        self._deadline = None
        if self.transport is not None:
            log.debug("closing a connection whose request head took over %ss", self._header_timeout)
            self.transport.close()


class ProxyServer(web.Server):
    """``web.Server`` whose connections get a head deadline and whose handlers are cancelled when
    the client hangs up (without that, a handler waiting on a silent upstream never learns)."""

    def __init__(self, handler: Handler, header_timeout: float, **kwargs: Any):
        super().__init__(self._serve, handler_cancellation=True, access_log=None, **kwargs)
        self._proxy = handler
        self._header_timeout = header_timeout

    async def _serve(self, request: web.BaseRequest) -> web.StreamResponse:
        protocol = request.protocol
        if isinstance(protocol, HeadDeadlineProtocol):
            protocol.head_received()
        try:
            return await self._proxy(request)
        finally:
            if isinstance(protocol, HeadDeadlineProtocol) and request.transport is not None:
                protocol.arm_head_deadline()

    def __call__(self) -> RequestHandler:
        return HeadDeadlineProtocol(self, loop=self._loop, header_timeout=self._header_timeout, **self._kwargs)


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


def stop_read_timeout(response: aiohttp.ClientResponse) -> None:
    """Stop aiohttp's per-read ``sock_read`` timer once the response head is in: the relay keeps
    its own idle deadline, which costs nothing per chunk."""
    protocol = _protocol(response)
    if protocol is not None:
        protocol.read_timeout = None
        protocol._drop_timeout()
