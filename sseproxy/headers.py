"""Header policy in one ordered place: hop-by-hop removal, then ``remove``, then ``set``/``add``.

Pure functions over ``CIMultiDict``: the inbound request and upstream response are never mutated,
new header sets are built from them, so no client header can strip or override an injected one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from multidict import CIMultiDict, CIMultiDictProxy

from .decoding import DECODABLE

Headers = CIMultiDict[str] | CIMultiDictProxy[str]

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "transfer-encoding", "upgrade",
})


@dataclass(frozen=True, repr=False)
class Rules:
    """Compiled header rules; values may be secrets, so the repr never shows them."""

    remove: tuple[str, ...] = ()
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()

    def __repr__(self) -> str:
        return f"Rules(remove={list(self.remove)}, set={[k for k, _ in self.set]}, add={[k for k, _ in self.add]})"

    def secret_values(self) -> list[str]:
        return [v for _, v in (*self.set, *self.add) if v]


def connection_tokens(headers: Headers) -> set[str]:
    return {t.strip().lower() for v in headers.getall("Connection", ()) for t in v.split(",") if t.strip()}


def without_hop_by_hop(headers: Headers, keep: Iterable[str] = ()) -> CIMultiDict[str]:
    """A copy without hop-by-hop headers or any header that ``Connection`` names (``keep`` excepted)."""
    drop = HOP_BY_HOP | connection_tokens(headers) if "Connection" in headers else HOP_BY_HOP
    if keep:
        drop = drop - {k.lower() for k in keep}
    return CIMultiDict([(k, v) for k, v in headers.items() if k.lower() not in drop])


def apply_rules(headers: CIMultiDict[str], rules: Rules) -> None:
    for name in rules.remove:
        headers.popall(name, None)
    for name, value in rules.set:
        headers[name] = value
    for name, value in rules.add:
        headers.add(name, value)


@dataclass(slots=True)  # one per request: not frozen (a frozen init is four times slower); never changed
class Hop:
    """This hop, as the upstream should hear of it: who asked, over what, for which host."""

    client_ip: str | None
    proto: str
    host: str | None
    trusted: bool          # the client is a trusted proxy: its X-Forwarded-For is kept


@dataclass(frozen=True)
class OutboundPolicy:
    """A route's rules for the request headers sent upstream, compiled once."""

    rules: Rules
    forwarded: bool
    preserve_host: bool
    token_header: str | None   # the inbound-auth header, never forwarded
    underscores_in_headers: bool = False   # False: client headers with '_' in the name are dropped
    dropped: frozenset[str] = field(init=False)  # lower-case names never copied from the client

    def __post_init__(self) -> None:
        names = {*HOP_BY_HOP, "host", "expect", "accept-encoding"}  # the upstream's Host unless preserve_host;
        if self.token_header is not None:                           # the proxy answers 100-continue itself
            names.add(self.token_header.lower())
        if self.forwarded:
            names.update(n.lower() for n in FORWARDED_HEADERS)
        object.__setattr__(self, "dropped", frozenset(names))


FORWARDED_HEADERS = ("X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "Forwarded")


def add_forwarded(headers: CIMultiDict[str], hop: Hop, inbound: Headers) -> None:
    """``X-Forwarded-For`` is the client's address, appended to what came in only from a trusted
    proxy (any other client could claim any address); ``-Proto`` and ``-Host`` describe this hop.
    ``headers`` has none of these yet: they are read from ``inbound``."""
    prior = ", ".join(inbound.getall("X-Forwarded-For", ())) if hop.trusted else ""
    if hop.client_ip:
        headers["X-Forwarded-For"] = f"{prior}, {hop.client_ip}" if prior else hop.client_ip
    headers["X-Forwarded-Proto"] = hop.proto
    if hop.host:
        headers["X-Forwarded-Host"] = hop.host


def decodable_accept_encoding(value: str) -> str:
    """The client's Accept-Encoding narrowed to codings the proxy can decode mid-stream."""
    kept = [p.strip() for p in value.split(",") if p.split(";")[0].strip().lower() in DECODABLE]
    return ", ".join(kept) if kept else "identity"


def is_local_host(host: str) -> bool:
    """Loopback or private addresses, ``localhost``, ``*.localhost`` and dotless names (containers)."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost") or ("." not in host and ":" not in host):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_link_local


def merge_cache_control(value: str | None) -> str:
    tokens = [t.strip() for t in (value or "").split(",") if t.strip()]
    present = {t.split("=")[0].lower() for t in tokens}
    tokens = [t for t in tokens if not t.lower().startswith(("max-age", "s-maxage", "public"))]
    tokens += [t for t in ("no-cache", "no-transform") if t not in present]
    return ", ".join(tokens)


def stream_response_headers(headers: CIMultiDict[str], decoded: bool) -> None:
    """What every streamed response carries: no length, no transform, no buffering by an nginx in front."""
    headers.popall("Content-Length", None)
    if decoded:
        headers.popall("Content-Encoding", None)
    headers["Cache-Control"] = merge_cache_control(headers.get("Cache-Control"))
    headers["X-Accel-Buffering"] = "no"


def upstream_accept_encoding(mode: str, client_value: str | None, *, prefer_identity: bool) -> str | None:
    """What to ask the upstream for, so that no dev server gzips and holds back a stream.

    With ``auto``: ``identity`` where ``prefer_identity`` (a local upstream, a client asking for a
    stream type, a route that always streams); else the client's value, narrowed to codings the
    proxy can decode mid-stream.
    """
    if mode == "pass":
        return client_value
    if mode == "identity" or prefer_identity:
        return "identity"
    return decodable_accept_encoding(client_value) if client_value is not None else None


def outbound_request_headers(inbound: Headers, policy: OutboundPolicy, hop: Hop,
                             accept_encoding: str | None) -> CIMultiDict[str]:
    """The headers sent upstream: hop-by-hop and underscored names removed, then ``remove``, then
    ``set``/``add`` (a name with '_' that the config sets is the config's choice, and is sent).

    One pass over the client's headers with the route's compiled ``dropped`` names: this runs once
    per request."""
    drop = policy.dropped
    if "Connection" in inbound:
        drop = drop | connection_tokens(inbound)
    if "chunked" in inbound.get("Transfer-Encoding", "").lower():
        drop = drop | {"content-length"}  # a chunked body's length is not known up front
    # CGI and WSGI map '-' and '_' both to '_': X_Api_Key would pass a `remove: [X-Api-Key]` rule and
    # arrive as the same variable (nginx's underscores_in_headers off).
    underscores = policy.underscores_in_headers
    out = CIMultiDict([(k, v) for k, v in inbound.items()
                       if k.lower() not in drop and (underscores or "_" not in k)])
    if accept_encoding is not None:
        out["Accept-Encoding"] = accept_encoding
    if policy.forwarded:
        add_forwarded(out, hop, inbound)
    if policy.preserve_host and hop.host:
        out["Host"] = hop.host
    apply_rules(out, policy.rules)
    return out


def rewrite_location(value: str, bases: Iterable[tuple[str, str]], prefix: str, strip_prefix: bool) -> str:
    """Map a redirect into the upstream back onto the proxy's route, as nginx's ``proxy_redirect
    default`` does. ``bases`` are ``(origin, base_path)`` pairs, e.g. ``("http://127.0.0.1:3000", "/v1")``.

    An absolute URL on an upstream's origin, or a path-absolute reference, under the upstream's base
    path becomes a path on this route; anything else (another host, a path outside the base) is kept.
    """
    for origin, base_path in bases:
        same_origin = value[: len(origin)].lower() == origin.lower()
        if same_origin and value[len(origin): len(origin) + 1] in ("", "/", "?", "#"):
            rest = value[len(origin):] or "/"
        elif value.startswith("/") and not value.startswith("//"):
            rest = value
        else:
            continue
        base = base_path.rstrip("/")
        if base and not (rest == base or rest.startswith((base + "/", base + "?", base + "#"))):
            return value
        tail = rest[len(base):]
        mount = prefix.rstrip("/") if strip_prefix else ""
        path = mount + tail if not tail.startswith(("?", "#")) else (mount or "/") + tail
        return path or "/"
    return value
