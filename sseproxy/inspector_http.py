"""The inspector's endpoints under ``admin_prefix``: the page (``/``), its two static files, the
listing (``/streams``) and the live feed (``/streams/events``).

Who may look: without ``inbound_auth``, loopback clients only, and only when the request did not
come through another proxy (a ``Forwarded``/``X-Forwarded-For``/``X-Real-IP`` header refuses it: a
local nginx in front would otherwise make every visitor look local; such headers only ever deny,
never grant), and only under a local Host name (``localhost``, ``*.localhost``, a loopback address)
or one ``allowed_hosts`` names: with ``allowed_hosts: ["*"]`` (the default off loopback) a web page
could otherwise rebind its own name to 127.0.0.1 and read the streams from a local browser.
With ``inbound_auth``, a valid token from anyone (loopback too), in the token header
or as ``?token=`` (EventSource cannot set headers). Others get 403. The static files hold no data
and are served to anyone who reaches the admin prefix.
"""

from __future__ import annotations

import hmac
import ipaddress
from importlib import resources

from aiohttp import web
from multidict import MultiMapping

from .auth import presented_token
from .errors import Forbidden, ProxyError
from .inspector import Inspector, feed_item
from .routing import parse_host
from .runtime import AuthPolicy, Runtime

HEARTBEAT = 15.0   # seconds between comment lines on an idle feed, so proxies and browsers keep it open
ASSETS = {"inspector.js": "text/javascript", "inspector.css": "text/css"}
FORWARDING = ("Forwarded", "X-Forwarded-For", "X-Real-IP")
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # a ?token= in the page's address never leaves in a Referer
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
}


class FeedsFull(ProxyError):
    status = 503
    type = "busy"


def is_loopback(client: str | None) -> bool:
    try:
        address = ipaddress.ip_address(client or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def token_valid(auth: AuthPolicy, headers: MultiMapping[str], query: MultiMapping[str]) -> bool:
    token = presented_token(auth.header, headers.get(auth.header))
    if token is None:
        token = query.get("token")
    if not token:
        return False
    matched, candidate = False, token.encode()
    for expected in auth.tokens:  # every token is compared, so timing tells nothing about which matched
        matched |= hmac.compare_digest(expected, candidate)
    return matched


def local_host(host: str, allowed: frozenset[str]) -> bool:
    """A Host a DNS-rebinding page cannot use: a loopback name or address, or one named in config."""
    if host == "localhost" or host.endswith(".localhost") or (host in allowed and host != "*"):
        return True
    return is_loopback(host.strip("[]"))


def may_inspect(auth: AuthPolicy | None, client: str | None, headers: MultiMapping[str],
                query: MultiMapping[str], allowed_hosts: frozenset[str] = frozenset()) -> bool:
    """The access decision (see the module's docstring)."""
    if auth is not None:
        return token_valid(auth, headers, query)
    return (is_loopback(client) and not any(h in headers for h in FORWARDING)
            and local_host(parse_host(headers.get("Host")), allowed_hosts))


def check_access(runtime: Runtime, request: web.BaseRequest) -> None:
    snapshot = runtime.snapshot
    if not may_inspect(snapshot.auth, request.remote, request.headers, request.query, snapshot.allowed_hosts):
        why = ("a valid token (header or ?token=)" if runtime.snapshot.auth is not None
               else "a direct loopback client under a local Host name")
        raise Forbidden(f"the inspector answers only {why}")


async def respond(runtime: Runtime, request: web.BaseRequest, path: str) -> web.StreamResponse | None:
    """The answer for an inspector path, or ``None`` when ``path`` is not one."""
    prefix = runtime.snapshot.admin_prefix
    rest = path[len(prefix):]
    if rest == "":
        query = request.raw_path.partition("?")[2]
        return web.Response(status=308, headers={"Location": prefix + "/" + (f"?{query}" if query else "")})
    if rest == "/":
        check_access(runtime, request)
        return _asset("index.html", "text/html")
    if rest.removeprefix("/") in ASSETS:
        name = rest.removeprefix("/")
        return _asset(name, ASSETS[name])
    if rest == "/streams":
        check_access(runtime, request)
        return web.json_response(runtime.inspector.listing(), headers={"Cache-Control": "no-store"})
    if rest == "/streams/events":
        check_access(runtime, request)
        return await feed(runtime.inspector, request)
    return None


def _asset(name: str, content_type: str) -> web.Response:
    body = resources.files("sseproxy").joinpath("static", "inspector", name).read_bytes()
    return web.Response(body=body, content_type=content_type, charset="utf-8", headers=PAGE_HEADERS)


async def feed(inspector: Inspector, request: web.BaseRequest, heartbeat: float = HEARTBEAT) -> web.StreamResponse:
    """The live feed: a ``snapshot``, then ``start``/``head``/``frame``/``end``/``drop`` as they happen;
    after a gap a ``dropped`` count and a fresh ``snapshot``; ``shutdown`` at the end."""
    subscriber = inspector.subscribe()
    if subscriber is None:
        raise FeedsFull("too many inspector feeds are open" if not inspector.closed else "sseproxy is stopping")
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
    try:
        snapshot = feed_item("snapshot", inspector.listing())  # taken with the subscription: no gap, no repeat
        await response.prepare(request)
        await response.write(b"retry: 2000\n\n" + snapshot)
        while not subscriber.closed:
            if not await subscriber.wait(heartbeat):
                await response.write(b": ping\n\n")
                continue
            items, dropped = subscriber.take()
            if dropped:
                items += [feed_item("dropped", {"count": dropped}), feed_item("snapshot", inspector.listing())]
            if items:
                await response.write(b"".join(items))
        await response.write(feed_item("shutdown", {}))
        await response.write_eof()
    except ConnectionError:
        pass  # the page went away
    finally:
        inspector.unsubscribe(subscriber)
    return response


__all__ = ["check_access", "feed", "is_loopback", "may_inspect", "respond"]
