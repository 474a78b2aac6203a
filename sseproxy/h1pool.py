"""Keep-alive pools of lean HTTP/1.1 connections (``h1``) to plain-http upstreams, one per origin,
and ``send``, which takes a connection from the route's upstream (the next one while connecting
fails) and sends one request on it.

Names are resolved through aiohttp's resolver and kept a while; a connection is made with a
timer for the connect timeout rather than a timeout context per stream.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import math
import socket

import aiohttp
import aiohttp.abc
import aiohttp.connector
from yarl import URL

from .errors import UpstreamConnectError, UpstreamConnectTimeout, UpstreamUnavailable
from .h1 import H1Connection, H1Response, OnHead, request_head
from .upstream import OutboundRequest, Timeouts, UpstreamTarget, with_failover

DNS_TTL = 10.0  # seconds a name's addresses are kept (aiohttp's connector keeps them as long)


class Addresses:
    """Names resolved through aiohttp's resolver (the one its connector uses), kept ``DNS_TTL``
    seconds, so a burst of new streams does not make a lookup each; IP literals are not looked up."""

    def __init__(self) -> None:
        self._resolver: aiohttp.abc.AbstractResolver | None = None
        self._cache: dict[tuple[str, int], tuple[float, list[str]]] = {}

    async def lookup(self, host: str, port: int, loop: asyncio.AbstractEventLoop) -> list[str]:
        cached = self._cache.get((host, port))
        if cached is not None and cached[0] > loop.time():
            return cached[1]
        literal = host.strip("[]")
        try:
            ipaddress.ip_address(literal)
        except ValueError:
            if self._resolver is None:
                self._resolver = aiohttp.connector.DefaultResolver()  # type: ignore[attr-defined]  # the connector's
            found = [r["host"] for r in await self._resolver.resolve(host, port, socket.AF_UNSPEC)]
            self._cache[(host, port)] = (loop.time() + DNS_TTL, found)
        else:
            found = [literal]
            self._cache[(host, port)] = (math.inf, found)  # an address literal: never looked up
        return found

    async def close(self) -> None:
        if self._resolver is not None:
            await self._resolver.close()


class H1Pool:
    """Keep-alive connections to one upstream origin (host, port)."""

    def __init__(self, host: str, port: int, addresses: Addresses):
        self.loop = asyncio.get_running_loop()
        self.host = host
        self.port = port
        self.addresses = addresses
        self.where = f"http://{host}:{port}"  # for messages: never a userinfo
        self.idle: collections.deque[H1Connection] = collections.deque()
        self.busy: set[H1Connection] = set()

    def put(self, connection: H1Connection) -> None:
        self.busy.discard(connection)
        connection.park()
        self.idle.append(connection)

    def forget(self, connection: H1Connection) -> None:
        self.busy.discard(connection)
        if connection.idle:  # only a parked connection is in the deque: no ValueError raised per stream
            with contextlib.suppress(ValueError):
                self.idle.remove(connection)

    async def connection(self, timeouts: Timeouts) -> H1Connection:
        while self.idle:
            connection = self.idle.pop()  # the most recently used: the least likely to have timed out
            connection.unpark()
            if connection.transport is not None and not connection.transport.is_closing():
                self.busy.add(connection)
                return connection
        task = asyncio.current_task(self.loop)  # with the loop: no get_running_loop() (a getpid() syscall)
        expired: list[bool] = []  # a timer that cancels this task, lighter than asyncio.timeout per stream
        timer = self.loop.call_later(timeouts.connect, _expire, task, expired) \
            if timeouts.connect and task is not None else None
        try:
            connection = await self._connect()
        except asyncio.CancelledError:
            if not expired:
                raise
            assert task is not None
            task.uncancel()
            raise UpstreamConnectTimeout(f"connecting to {self.where} took over {timeouts.connect:g}s") from None
        except (socket.gaierror, aiohttp.ClientConnectorDNSError):
            raise UpstreamConnectError(f"DNS lookup failed for {self.where}") from None
        except OSError as error:
            raise UpstreamConnectError(f"cannot connect to {self.where}: {error.strerror or error}") from None
        finally:
            if timer is not None:
                timer.cancel()
        self.busy.add(connection)
        return connection

    async def _connect(self) -> H1Connection:
        """Each address the name resolves to in turn (localhost may be ::1 only, or 127.0.0.1 only)."""
        last: OSError | None = None
        for host in await self.addresses.lookup(self.host, self.port, self.loop):
            try:
                _, connection = await self.loop.create_connection(lambda: H1Connection(self), host, self.port)
                return connection
            except OSError as error:
                last = error
        raise last or OSError(f"{self.host} resolves to no address")

    def close(self) -> None:
        for connection in [*self.idle, *self.busy]:
            connection.abort()



def _expire(task: asyncio.Task[object], expired: list[bool]) -> None:
    expired.append(True)
    task.cancel()


class H1Pools:
    """One ``H1Pool`` per upstream (host, port), made on first use."""

    def __init__(self) -> None:
        self._pools: dict[tuple[str, int], H1Pool] = {}
        self._addresses = Addresses()

    def addresses(self) -> set[tuple[str, int]]:
        return set(self._pools)

    def get(self, host: str, port: int) -> H1Pool:
        pool = self._pools.get((host, port))
        if pool is None:
            pool = self._pools[(host, port)] = H1Pool(host, port, self._addresses)
        return pool

    def close_except(self, keep: set[tuple[str, int]]) -> None:
        for key in set(self._pools) - keep:
            self._pools.pop(key).close()

    async def close(self) -> None:
        self.close_except(set())
        await self._addresses.close()


def address(url: URL) -> tuple[str, int]:
    return url.raw_host or "", url.port or 80


async def send(pools: H1Pools, target: UpstreamTarget, out: OutboundRequest, on_head: OnHead | None = None
               ) -> H1Response:
    """Like ``upstream.send``, on this client: the next upstream while connecting fails. ``on_head``:
    see ``H1Connection.exchange``."""

    async def attempt(base: URL, path_qs: str) -> H1Response:
        pool = pools.get(*address(base))
        head, chunked = request_head(out, path_qs, base.raw_authority)
        head_only = out.method == "HEAD"
        connection = await pool.connection(target.timeouts)
        try:
            return await connection.exchange(head, out.body, chunked, target.timeouts, head_only, on_head)
        except UpstreamUnavailable:
            if not (connection.reused and out.body is None):
                raise
        # a kept-alive connection the upstream closed just as it was reused: once more on a new one
        connection = await pool.connection(target.timeouts)
        return await connection.exchange(head, out.body, chunked, target.timeouts, head_only, on_head)

    return await with_failover(target, out.path, out.query, attempt)
