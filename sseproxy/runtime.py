"""A config compiled once into the objects a request uses, and the live state a reload swaps.

The request path reads no pydantic model: routes, CORS, timeouts, auth, trusted proxies and the
allowed hosts are compiled here. A ``Snapshot`` is immutable: each request takes the current one
when it starts and keeps it, so a reload applies to new requests while streams in flight carry on
with the routes they started on.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from yarl import URL

from .addresses import is_loopback_host
from .config import Config, Route
from .config_sections import HeaderRules, RequestHeaderRules
from .cors import CorsPolicy, compile_cors
from .h1pool import H1Pools, address
from .headers import OutboundPolicy, Rules, is_local_host, rewrite_location
from .hooks import HookFactory
from .inspector import Inspector
from .limits import ConcurrencyLimits, StreamCounts
from .metrics import Metrics
from .recorder import Recorder
from .registry import Registry
from .resume_store import ResumeSettings, Stores
from .retry import NO_RETRY, RetryPolicy
from .routing import RoundRobin, join_path
from .upstream import Origin, Pools, Timeouts, origin_of
from .usage import UsageHooks

DEFAULT_CONNECT = 10.0
DEFAULT_IDLE = 300.0
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, eq=False)
class RouteRuntime:
    """One route, ready to serve: defaults resolved, secrets unwrapped, upstream URLs parsed."""

    label: str
    prefix: str
    host: str | None
    methods: frozenset[str] | None
    upstreams: RoundRobin
    strip_prefix: bool
    websocket: bool
    stream: str                    # auto | always | never
    outbound: OutboundPolicy
    response_rules: Rules
    timeouts: Timeouts
    heartbeat: float
    cors: CorsPolicy | None
    compression: str               # auto | pass | identity
    local_upstream: bool           # any upstream on loopback, a private address or a dotless name
    hooks: tuple[HookFactory, ...] = ()   # this route's features (recording, resume, usage...)
    retry: RetryPolicy = NO_RETRY
    limits: ConcurrencyLimits | None = None
    plain_http: bool = False       # every upstream is http://: the lean client (h1) serves it
    resume: ResumeSettings | None = None  # resumable streams (resume.py)

    def rewrite_location(self, value: str) -> str:
        bases = [(f"{u.scheme}://{u.raw_authority}", u.raw_path if u.raw_path != "/" else "")
                 for u in self.upstreams.urls]
        return rewrite_location(value, bases, self.prefix, self.strip_prefix)

    def upstream_path(self, base: URL, path: str) -> str:
        return join_path(base.raw_path if base.raw_path != "/" else "", self.prefix, path, self.strip_prefix)


@dataclass(frozen=True)
class WebSocketLimits:
    """The top-level ``websocket`` section, compiled: one message's bound and all messages' bound."""

    max_message: int
    max_total: int


@dataclass(frozen=True)
class AuthPolicy:
    header: str
    tokens: tuple[bytes, ...]      # compared in constant time


@dataclass(eq=False)
class InFlight:
    """How many requests are using a snapshot."""

    count: int = 0


@dataclass(frozen=True)
class Snapshot:
    config: Config                     # what the user wrote: for `check` and reloads, not for requests
    routes: list[RouteRuntime]
    origins: frozenset[Origin]         # the upstream pools its routes use
    addresses: frozenset[tuple[str, int]]  # the plain-http upstreams' (host, port), for the lean pools
    allowed_hosts: frozenset[str]      # exact hosts (lower case, without port); "*" allows any
    auth: AuthPolicy | None
    trusted_proxies: tuple[IpNetwork, ...]
    admin_prefix: str
    max_body: int
    access_log: str                    # text | json | off
    websocket: WebSocketLimits         # bounds on relayed WebSocket messages
    secrets: tuple[str, ...]           # every injected value and token: never to be shown
    recorders: tuple[Recorder, ...] = ()   # one per recording directory, closed when the snapshot retires
    in_flight: InFlight = field(default_factory=InFlight, compare=False)

    def host_allowed(self, host: str) -> bool:
        if "*" in self.allowed_hosts or host in self.allowed_hosts:
            return True
        return "*.localhost" in self.allowed_hosts and host.endswith(".localhost")

    def trusted(self, client: str | None) -> bool:
        if not self.trusted_proxies or not client:
            return False
        try:
            address = ipaddress.ip_address(client)
        except ValueError:
            return False
        return any(address in network for network in self.trusted_proxies)


def _request_rules(rules: RequestHeaderRules) -> Rules:
    return Rules(remove=tuple(rules.remove),
                 set=tuple((k, v.get_secret_value()) for k, v in rules.set.items()),
                 add=tuple((k, v.get_secret_value()) for k, v in rules.add.items()))


def _response_rules(rules: HeaderRules) -> Rules:
    return Rules(remove=tuple(rules.remove), set=tuple(rules.set.items()), add=tuple(rules.add.items()))


def _timeouts(route: Route, config: Config) -> Timeouts:
    def pick(own: float | None, default: float | None, builtin: float) -> float:
        return own if own is not None else default if default is not None else builtin

    return Timeouts(connect=pick(route.timeouts.connect, config.timeouts.connect, DEFAULT_CONNECT),
                    idle=pick(route.timeouts.idle, config.timeouts.idle, DEFAULT_IDLE))


def _compile_route(route: Route, config: Config, hooks: tuple[HookFactory, ...], counts: StreamCounts
                   ) -> RouteRuntime:
    return RouteRuntime(
        label=route.label,
        prefix=route.path,
        host=route.host,
        methods=frozenset(route.methods) if route.methods is not None else None,
        upstreams=RoundRobin(tuple(URL(u) for u in route.upstream)),
        strip_prefix=route.strip_prefix,
        websocket=route.websocket,
        stream=route.stream,
        outbound=OutboundPolicy(
            rules=_request_rules(route.request_headers), forwarded=route.forwarded,
            preserve_host=route.preserve_host,
            underscores_in_headers=config.underscores_in_headers,
            token_header=config.inbound_auth.header if config.inbound_auth is not None else None),
        response_rules=_response_rules(route.response_headers),
        timeouts=_timeouts(route, config),
        heartbeat=route.heartbeat if route.heartbeat is not None else config.heartbeat,
        cors=compile_cors(route.cors if route.cors is not None else config.cors),
        compression=route.upstream_compression or config.upstream_compression,
        local_upstream=any(is_local_host(urlsplit(u).hostname or "") for u in route.upstream),
        hooks=hooks,
        retry=RetryPolicy.from_config(config.retry_for(route)),
        limits=ConcurrencyLimits.from_config(config.limits_for(route), scope=route.label, counts=counts),
        plain_http=all(urlsplit(u).scheme == "http" for u in route.upstream),
        resume=ResumeSettings(route.resume.store, route.resume.ttl, route.resume.detach, route.resume.max_bytes)
        if route.resume is not None else None,
    )


def _allowed_hosts(config: Config) -> frozenset[str]:
    if config.allowed_hosts:
        return frozenset(config.allowed_hosts)
    host, _ = config.listen_address
    if not is_loopback_host(host):
        return frozenset({"*"})
    route_hosts = {r.host for r in config.routes if r.host}
    return frozenset({"localhost", "127.0.0.1", "[::1]", "*.localhost", *route_hosts})


def _secrets(config: Config) -> tuple[str, ...]:
    """Every injected value and inbound token, and each long word of them: ``Bearer sk-…`` is a
    secret, and so is the bare key an upstream may echo back."""
    values = [v.get_secret_value() for r in config.routes
              for v in (*r.request_headers.set.values(), *r.request_headers.add.values())]
    values += [t.get_secret_value() for t in config.inbound_auth.tokens] if config.inbound_auth else []
    words = [w for v in values for w in v.split() if len(w) >= 8]
    return tuple({s for s in (*values, *words) if s})


def compile_config(config: Config, counts: StreamCounts | None = None) -> Snapshot:
    """``counts`` (the streams each limit holds now) outlives reloads: pass the runtime's."""
    secrets = _secrets(config)
    counts = counts if counts is not None else StreamCounts()
    recorders = {d: Recorder(d, secrets) for r in config.routes if (d := config.record_dir(r)) is not None}
    usage = UsageHooks()
    routes = [_compile_route(r, config, (usage, *((recorders[d],) if (d := config.record_dir(r)) else ())),
                             counts) for r in config.routes]
    tokens = tuple(t.get_secret_value() for t in config.inbound_auth.tokens) if config.inbound_auth else ()
    auth = (AuthPolicy(config.inbound_auth.header, tuple(t.encode() for t in tokens))
            if config.inbound_auth is not None else None)
    return Snapshot(
        config=config,
        routes=routes,
        origins=frozenset(origin_of(u) for r in routes for u in r.upstreams.urls),
        addresses=frozenset(address(u) for r in routes for u in r.upstreams.urls if u.scheme == "http"),
        allowed_hosts=_allowed_hosts(config),
        auth=auth,
        trusted_proxies=tuple(ipaddress.ip_network(c, strict=False) for c in config.trusted_proxies),
        admin_prefix=config.admin_prefix,
        max_body=config.max_body,
        access_log=config.access_log,
        websocket=WebSocketLimits(config.websocket.max_message, config.websocket.max_total),
        secrets=secrets,
        recorders=tuple(recorders.values()),
    )


@dataclass
class Runtime:
    """What lives as long as the server: the current snapshot, the upstream pools, the exchanges
    in flight and the process-wide hooks (``--tap``, and always the inspector, last)."""

    snapshot: Snapshot
    counts: StreamCounts = field(default_factory=StreamCounts)  # concurrency limits' state, across reloads
    pools: Pools = field(default_factory=Pools)
    h1: H1Pools = field(default_factory=H1Pools)
    metrics: Metrics = field(default_factory=Metrics)
    streams: Registry = field(default_factory=Registry)
    hooks: Sequence[HookFactory] = ()
    draining: bool = False
    retiring: list[Snapshot] = field(default_factory=list)  # replaced, with requests still in flight
    inspector: Inspector = field(default_factory=Inspector)  # always hooked: the inspector page's streams
    resume_stores: Stores = field(init=False)  # resumable streams' stores: kept across reloads

    def __post_init__(self) -> None:
        self.resume_stores = Stores(self.snapshot.config.resume_memory)
        self.inspector.redactor.add(self.snapshot.secrets)
        self.hooks = (*self.hooks, self.inspector)
        self.metrics.add_routes(r.label for r in self.snapshot.routes)  # every route's series, at 0

    def enter(self) -> Snapshot:
        """The snapshot a new request keeps to its end, counted until ``leave``."""
        snapshot = self.snapshot
        snapshot.in_flight.count += 1
        return snapshot

    def leave(self, snapshot: Snapshot) -> None:
        snapshot.in_flight.count -= 1
        if snapshot.in_flight.count == 0 and snapshot is not self.snapshot:
            self._close_unused_pools()

    def swap(self, snapshot: Snapshot) -> None:
        """A reload: new requests get ``snapshot``; requests in flight keep theirs, and the pools
        only old snapshots used are closed once the last of those requests ends."""
        self.retiring.append(self.snapshot)
        self.snapshot = snapshot
        self.inspector.redactor.add(snapshot.secrets)
        self.metrics.add_routes(r.label for r in snapshot.routes)
        self._close_unused_pools()

    def _close_unused_pools(self) -> None:
        retired = [s for s in self.retiring if s.in_flight.count == 0]
        self.retiring = [s for s in self.retiring if s.in_flight.count > 0]
        self.pools.close_except({o for s in (self.snapshot, *self.retiring) for o in s.origins})
        self.h1.close_except({a for s in (self.snapshot, *self.retiring) for a in s.addresses})
        for snapshot in retired:
            for recorder in snapshot.recorders:
                self.pools.in_background(recorder.close())

    async def close(self) -> None:
        """At exit: the pools, and the current snapshot's recordings written to the end."""
        for recorder in self.snapshot.recorders:
            await recorder.close()
        await self.resume_stores.close()
        await self.h1.close()
        await self.pools.close()
