"""Where a request goes: raw-target checks, whole-segment prefix matching, path and query joining.

Checks run on the raw request target, before aiohttp's URL handling could normalise ``..`` or
decode ``%2f`` away, and the path that matched a route is exactly the path forwarded.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import re
from dataclasses import dataclass, field
from typing import Protocol, TypeVar
from urllib.parse import urlsplit

from yarl import URL

from .errors import BadRequest, MethodNotAllowed, NoRoute

_FORBIDDEN_ENCODED = ("%2f", "%5c", "%00")


@dataclass(slots=True)  # one per request: not frozen (a frozen init is four times slower); never changed
class Target:
    """The checked request target: raw path and raw query, exactly as the client encoded them."""

    path: str
    query: str


def check_target(method: str, raw_target: str, host_header: str | None) -> Target:
    """Refuse CONNECT, foreign absolute-form targets, traversal and encoded separators (400)."""
    if method == "CONNECT":
        raise BadRequest("CONNECT is refused: sseproxy is a reverse proxy, not a forward proxy")
    if "#" in raw_target:
        raise BadRequest("a fragment ('#') is refused in the request target: no client sends one")
    target = raw_target
    if not target.startswith("/"):
        parts = urlsplit(target)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise BadRequest("the request target must be a path")
        if host_header is None or parts.netloc.lower() != host_header.lower():
            raise BadRequest("absolute-form targets for other hosts are refused: sseproxy is not a "
                             "forward proxy")
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
    path, _, query = target.partition("?")
    lowered = path.lower()
    if "\\" in path or "\x00" in path or any(bad in lowered for bad in _FORBIDDEN_ENCODED):
        raise BadRequest("encoded slashes, backslashes and NUL are refused in paths")
    if "." in lowered or "%2e" in lowered:  # else no segment can be a dot segment
        for segment in lowered.split("/"):
            # Servlet containers drop a ';' parameter before resolving dot segments: '..;x' is '..' there.
            name = segment.split(";", 1)[0].split("%3b", 1)[0]
            if name.replace("%2e", ".") in (".", ".."):
                raise BadRequest("dot segments ('.', '..', encoded, or with a ';' parameter) are refused in paths")
    return Target(path=path, query=query)


def segment_match(prefix: str, path: str) -> bool:
    """True where ``prefix`` covers ``path`` on whole segments: /api matches /api and /api/x, not /apix."""
    if prefix == "/" or path == prefix:
        return True
    if prefix.endswith("/"):
        return path.startswith(prefix)
    return path.startswith(prefix) and path[len(prefix)] == "/"


def join_path(base_path: str, prefix: str, path: str, strip_prefix: bool) -> str:
    """The upstream path: the base URL's path joined with what is left of ``path``."""
    rest = path
    if strip_prefix and prefix != "/":
        rest = path[len(prefix.rstrip("/")):]
    if not rest:
        return base_path or "/"
    return base_path.rstrip("/") + rest


@dataclass
class RoundRobin:
    """The route's upstream base URLs, handed out in turn; ``order()`` is the failover order."""

    urls: tuple[URL, ...]
    _counter: itertools.count[int] = field(default_factory=itertools.count)

    def order(self) -> list[URL]:
        start = next(self._counter) % len(self.urls)
        return [*self.urls[start:], *self.urls[:start]]


class Matchable(Protocol):
    """What the router needs of a route; ``runtime.RouteRuntime`` has it."""

    @property
    def prefix(self) -> str: ...
    @property
    def host(self) -> str | None: ...
    @property
    def methods(self) -> frozenset[str] | None: ...
    @property
    def label(self) -> str: ...


_HOST_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")  # DNS names (with '_', as containers use) and IPv4
_PORT = re.compile(r"[0-9]{0,5}")   # RFC 3986 allows an empty port ("host:")


@functools.lru_cache(maxsize=1024)  # the same few Host values, request after request; bounded
def parse_host(host_header: str | None) -> str:
    """The Host header's host, lower-cased, without port or trailing dot: what ``allowed_hosts`` and
    a route's ``host`` are compared with. "" when there is no Host header.

    Strict, because the header is also forwarded as X-Forwarded-Host: a name, an IPv4 address or a
    bracketed IPv6 address, then an optional numeric port up to 65535. Anything else (userinfo,
    text after ``]``, empty labels, spaces, a second colon) is a ``BadRequest``.
    """
    if host_header is None:
        return ""
    value = host_header.lower()
    if value.startswith("["):
        literal, sep, rest = value[1:].partition("]")
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            raise BadRequest("the Host header's bracketed address is not an IPv6 address") from None
        host, port = f"[{literal}]", rest.removeprefix(":")
        if not sep or (rest and not rest.startswith(":")):
            raise BadRequest("the Host header has text after its IPv6 address")
    else:
        host, _, port = value.partition(":")
        if not _HOST_NAME.fullmatch(host):
            raise BadRequest("the Host header is not a host name, an IPv4 address or a bracketed IPv6 address")
        host = host.removesuffix(".")
    if not _PORT.fullmatch(port) or (port and int(port) > 65535):
        raise BadRequest("the Host header's port is not a number from 0 to 65535")
    return host


R = TypeVar("R", bound=Matchable)


def find_route(routes: list[R], path: str, host: str, method: str, ignore_method: bool = False) -> R:
    """The first route whose host, path and method match; 405 if only the method differs."""
    refused: R | None = None
    for route in routes:
        if route.host is not None and route.host != host:
            continue
        if not segment_match(route.prefix, path):
            continue
        if ignore_method or route.methods is None or method in route.methods:
            return route
        refused = refused or route
    if refused is not None:
        allowed = ", ".join(sorted(refused.methods or ()))
        raise MethodNotAllowed(f"{method} is not allowed here (allowed: {allowed})", route=refused.label,
                               headers={"Allow": allowed})
    raise NoRoute(f"no route matches {path}")
