"""Connections to upstreams: one pooled ``ClientSession`` per upstream origin, round robin with the
next upstream tried on connect failure only, and the one place that maps aiohttp client
exceptions to ``ProxyError``.

The sessions are made for streaming: no total timeout (it would cut long streams), no pool cap
(stream 101 must not wait), no decompression (non-streamed bodies pass byte for byte), no
redirects followed (injected keys must not travel to another host), no cookie jar.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from .aiohttp_internals import GuardedConnector
from .errors import (
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamError,
    UpstreamIdle,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from .routing import RoundRobin

T = TypeVar("T")

# Headers aiohttp would add on its own; the proxy forwards exactly what the client sent instead.
_SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


@dataclass(frozen=True)
class Timeouts:
    connect: float
    idle: float

    def client_timeout(self) -> aiohttp.ClientTimeout:
        connect = self.connect or None
        return aiohttp.ClientTimeout(total=None, connect=connect, sock_connect=connect,
                                     sock_read=self.idle or None)


Origin = tuple[str, str, int | None]


def origin_of(url: URL) -> Origin:
    return url.scheme, url.raw_host or "", url.explicit_port


class Pools:
    """One ``ClientSession`` (connection pool) per upstream origin, made on first use."""

    def __init__(self) -> None:
        self._sessions: dict[Origin, aiohttp.ClientSession] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def origins(self) -> set[Origin]:
        return set(self._sessions)

    def close_except(self, keep: set[Origin]) -> None:
        """Close the pools of origins no config in use names any more (in the background)."""
        for origin in self.origins() - keep:
            self.in_background(self._sessions.pop(origin).close())

    def in_background(self, closing: Coroutine[Any, Any, None]) -> None:
        """Run a closing step without waiting for it; ``close()`` waits for all of them."""
        task = asyncio.get_running_loop().create_task(closing)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def session(self, url: URL) -> aiohttp.ClientSession:
        key = origin_of(url)
        session = self._sessions.get(key)
        if session is None or session.closed:
            connector = GuardedConnector(limit=0, limit_per_host=0, ttl_dns_cache=10)
            session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=None), skip_auto_headers=_SKIP_AUTO_HEADERS,
                requote_redirect_url=False,
            )
            self._sessions[key] = session
        return session

    async def close(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()
        await asyncio.gather(*self._closing)


def upstream_url(base: URL, path_qs: str) -> URL:
    """``base``'s scheme and authority with ``path_qs`` (path and query), kept exactly as encoded."""
    return URL(f"{base.scheme}://{base.raw_authority}{path_qs}", encoded=True)


@contextlib.contextmanager
def mapped_errors(url: URL, timeouts: Timeouts) -> Iterator[None]:
    """Translate aiohttp client exceptions raised before the response headers into ``ProxyError``."""
    where = f"{url.scheme}://{url.raw_host}:{url.port}"  # never the userinfo
    try:
        yield
    except aiohttp.ConnectionTimeoutError:
        raise UpstreamConnectTimeout(f"connecting to {where} took over {timeouts.connect:g}s") from None
    except (aiohttp.SocketTimeoutError, TimeoutError):
        raise UpstreamTimeout(f"{where} sent no response headers within {timeouts.idle:g}s") from None
    except aiohttp.ClientSSLError as e:
        raise UpstreamConnectError(f"TLS failure toward {where}: {e.__class__.__name__}") from None
    except aiohttp.ClientConnectorDNSError:
        raise UpstreamConnectError(f"DNS lookup failed for {where}") from None
    except aiohttp.ClientConnectorError as e:
        raise UpstreamConnectError(f"cannot connect to {where}: {e.strerror or e.os_error}") from None
    except aiohttp.ClientError as e:
        raise UpstreamUnavailable(f"{where} failed before responding: {e.__class__.__name__}") from None


class UpstreamTarget(Protocol):
    """What sending needs of a route; ``runtime.RouteRuntime`` has it."""

    @property
    def upstreams(self) -> RoundRobin: ...
    @property
    def timeouts(self) -> Timeouts: ...
    def upstream_path(self, base: URL, path: str) -> str: ...


@dataclass(slots=True)  # one per request: not frozen (a frozen init is four times slower); never changed
class OutboundRequest:
    """The request as it goes upstream: built from the inbound one, which is never mutated."""

    method: str
    path: str                           # the matched inbound path; the route maps it per upstream
    query: str                          # raw, without "?"
    headers: CIMultiDict[str]
    body: AsyncIterable[bytes] | None


async def with_failover(target: UpstreamTarget, path: str, query: str,
                        attempt: Callable[[URL, str], Awaitable[T]]) -> T:
    """``attempt(base, path_qs)`` on the route's next upstream, trying the others only while
    connecting fails (nothing was sent yet); any other failure is final. ``path_qs`` is the path on
    that upstream with the query, as encoded: the lean client needs no URL object per request."""
    last: UpstreamConnectError | UpstreamConnectTimeout | None = None
    for base in target.upstreams.order():
        path_qs = target.upstream_path(base, path)
        if query:
            path_qs = f"{path_qs}?{query}"
        try:
            return await attempt(base, path_qs)
        except (UpstreamConnectError, UpstreamConnectTimeout) as error:
            last = error
    assert last is not None
    raise last


async def send(pools: Pools, target: UpstreamTarget, out: OutboundRequest) -> aiohttp.ClientResponse:
    """Send the request upstream; the response headers have arrived when this returns."""
    timeout = target.timeouts.client_timeout()

    async def attempt(base: URL, path_qs: str) -> aiohttp.ClientResponse:
        url = upstream_url(base, path_qs)
        with mapped_errors(url, target.timeouts):
            return await pools.session(base).request(
                out.method, url, headers=out.headers, data=out.body, allow_redirects=False,
                timeout=timeout, compress=None, chunked=None,
            )

    return await with_failover(target, out.path, out.query, attempt)


def mid_stream_error(exc: BaseException, idle: float) -> UpstreamError:
    """What to tell the client when the upstream fails after its response started."""
    if isinstance(exc, aiohttp.SocketTimeoutError | TimeoutError):
        return UpstreamIdle(f"upstream sent nothing for {idle:g}s")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return UpstreamError("upstream response was cut off or badly framed")
    return UpstreamError(f"upstream connection failed: {exc.__class__.__name__}")
