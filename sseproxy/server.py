"""The listening server: aiohttp's low-level ``Server`` (every request target reaches the proxy's
handler, none is normalised away by a router), with handler cancellation on client hang-up and a
deadline for the request head, so a slowloris client is closed while others keep being served.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from .accesslog import AccessLog
from .proxy import ProxyHandler
from .runtime import Runtime

log = logging.getLogger("sseproxy")


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

    def __init__(self, handler: ProxyHandler, header_timeout: float, **kwargs: Any):
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


class Listener:
    """A running proxy on one address: start, then stop gracefully. Reloads swap ``runtime.snapshot``;
    ``header_timeout`` and ``listen`` are read once, here, so a reload does not change them."""

    def __init__(self, runtime: Runtime, access_log: AccessLog, *, reuse_port: bool = False):
        self.runtime = runtime
        self.handler = ProxyHandler(runtime, access_log)
        self.server = ProxyServer(self.handler, runtime.snapshot.config.header_timeout)
        self.runner = web.ServerRunner(self.server, handle_signals=False)
        self.reuse_port = reuse_port
        self.site: web.TCPSite | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        await self.runner.setup()
        self.site = web.TCPSite(self.runner, host, port, reuse_port=self.reuse_port or None,
                                backlog=4096)  # the kernel caps it at net.core.somaxconn
        await self.site.start()
        address = self.runner.addresses[-1]
        return str(address[0]), int(address[1])

    async def stop(self) -> None:
        """Stop gracefully within ``shutdown_grace``: stop accepting (health turns 503 for connections
        still open), let streams finish, end those still open with a ``shutdown`` error event between
        events, give other requests what is left of the grace, then close the upstream pools."""
        loop = asyncio.get_running_loop()
        grace = self.runtime.snapshot.config.shutdown_grace
        deadline = loop.time() + grace
        self.runtime.draining = True
        if self.site is not None:
            await self.site.stop()
        await asyncio.sleep(0)  # requests that arrived before the stop start being handled
        self.server.pre_shutdown()  # idle keep-alive connections close now, busy ones after their request
        await self.handler.websockets.close_all(timeout=grace)  # a WebSocket has no end to wait for: 1001
        stopped = await self.runtime.streams.drain(grace)
        if stopped:
            log.info("ended %d stream(s) still open after the %gs grace", stopped, grace)
        await self.server.shutdown(max(0.1, deadline - loop.time()))
        await self.runner.cleanup()
        await self.runtime.pools.close()
