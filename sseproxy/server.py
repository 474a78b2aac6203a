"""The listening server: the lean HTTP/1.1 protocol (``h1server``) on the socket, every request
target reaching the proxy's handler as sent (no router normalises it away), the handler cancelled on
client hang-up and a deadline for the request head, so a slowloris client is closed while others keep
being served. aiohttp's low-level ``Server`` (``aiohttp_internals.ProxyServer``) takes the connections
that upgrade (WebSocket). And the graceful stop, over both.
"""

from __future__ import annotations

import asyncio
import logging

from .accesslog import AccessLog
from .aiohttp_internals import ProxyServer
from .h1server import LeanServer
from .proxy import ProxyHandler
from .runtime import Runtime

log = logging.getLogger("sseproxy")


class Listener:
    """A running proxy on one address: start, then stop gracefully. Reloads swap ``runtime.snapshot``;
    ``header_timeout`` and ``listen`` are read once, here, so a reload does not change them."""

    def __init__(self, runtime: Runtime, access_log: AccessLog, *, reuse_port: bool = False):
        self.runtime = runtime
        config = runtime.snapshot.config
        self.handler = ProxyHandler(runtime, access_log)
        self.upgrades = ProxyServer(self.handler, header_timeout=config.header_timeout,
                                    max_head=config.max_header_size, on_refused=self.handler.refused)
        self.server = LeanServer(self.handler, upgrades=self.upgrades, deadlines=self.upgrades.deadlines,
                                 max_head=config.max_header_size, on_refused=self.handler.refused)
        self.reuse_port = reuse_port
        self.site: asyncio.Server | None = None
        self._stopped = False

    async def start(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self.site = await loop.create_server(self.server, host, port, reuse_port=self.reuse_port or None,
                                             backlog=4096)  # the kernel caps it at net.core.somaxconn
        address = self.site.sockets[-1].getsockname()
        return str(address[0]), int(address[1])

    async def stop(self) -> None:
        """Stop gracefully within ``shutdown_grace``: stop accepting (health turns 503 for connections
        still open), let streams finish, end those still open with a ``shutdown`` error event between
        events, give other requests what is left of the grace, then close the upstream pools."""
        if self._stopped:
            return
        self._stopped = True
        loop = asyncio.get_running_loop()
        grace = self.runtime.snapshot.config.shutdown_grace
        deadline = loop.time() + grace
        self.runtime.draining = True
        self.runtime.inspector.close()  # inspector feeds end now, not at the end of the grace
        if self.site is not None:
            self.site.close()  # stop accepting; open connections stay
        await asyncio.sleep(0)  # requests that arrived before the stop start being handled
        self.server.pre_shutdown()  # idle keep-alive connections close now, busy ones after their request
        self.upgrades.pre_shutdown()
        await self.handler.websockets.close_all(timeout=grace)  # a WebSocket has no end to wait for: 1001
        stopped = await self.runtime.streams.drain(grace)
        if stopped:
            log.info("ended %d stream(s) still open after the %gs grace", stopped, grace)
        remaining = max(0.1, deadline - loop.time())
        await asyncio.gather(self.server.shutdown(remaining), self.upgrades.shutdown(remaining))
        await self.runtime.close()
