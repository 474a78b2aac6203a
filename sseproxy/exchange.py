"""One exchange per request, like Go's ``ProxyRequest{In, Out}``: the inbound request, the snapshot
it keeps to its end, the route, the record that becomes its log line and metrics, and the hooks
features opened on it. Every step of the request path takes the exchange; nothing threads seven
parameters.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web
from multidict import CIMultiDict

from . import cors, errorpage
from .accesslog import RequestRecord
from .errors import ProxyError
from .framing import accepts_stream
from .headers import Hop, outbound_request_headers, upstream_accept_encoding
from .hooks import ExchangeInfo, Hook, open_hooks
from .limits import Lease
from .requestid import HEADER as REQUEST_ID
from .requestid import request_id
from .routing import Target
from .runtime import RouteRuntime, Runtime, Snapshot
from .tally import Tally

if TYPE_CHECKING:
    from .plan import StreamPlan
    from .relay_callbacks import CallbackRelay

log = logging.getLogger("sseproxy")


@dataclass(slots=True)
class Started:
    """A response begun where the upstream's head arrived, in its connection's callback
    (``proxy.ProxyHandler._start_early``): the handler relays it on when its task runs."""

    response: web.StreamResponse
    plan: StreamPlan
    relay: CallbackRelay


@dataclass(eq=False, slots=True)  # one per request in flight: no instance dict
class Exchange:
    id: int
    request: web.BaseRequest
    snapshot: Snapshot
    record: RequestRecord
    loop: asyncio.AbstractEventLoop    # the running loop, looked up once per request
    target: Target | None = None
    route: RouteRuntime | None = None
    hooks: tuple[Hook, ...] = ()
    writers: list[Hook] = field(default_factory=list)  # the hooks told of each write (hooks.py)
    tally: Tally = field(default_factory=Tally)        # what the client was written, counted by the relay
    body_sent: bool = True             # False while a request body is still being sent upstream
    lease: Lease | None = None         # the route's concurrent-stream slot, held until the stream ends
    request_id: str = ""               # the client's X-Request-Id or a new one (requestid.py)
    started: Started | None = None     # the response, when begun in the upstream's callback

    def __post_init__(self) -> None:
        self.request_id = self.request_id or request_id(self.request.headers)
        self.record.request_id = self.request_id

    @property
    def origin(self) -> str | None:
        return self.request.headers.get("Origin")

    @property
    def matched(self) -> RouteRuntime:
        """The route, once matched (every step after routing may rely on it)."""
        assert self.route is not None
        return self.route

    def open_hooks(self, runtime: Runtime) -> None:
        """Let every feature that applies to this exchange (process-wide and the route's) hook it."""
        route, target = self.matched, self.target
        assert target is not None
        factories = (runtime.metrics, *runtime.hooks, *route.hooks)  # metrics: the stream's tally as it runs
        info = ExchangeInfo(id=self.id, route=route.label, method=self.request.method, path=target.path,
                            query=target.query, client=self.request.remote, headers=self.request.headers,
                            started=self.record.started, request_id=self.request_id, tally=self.tally,
                            writers=self.writers)
        self.hooks = open_hooks(factories, info)

    def outbound_headers(self) -> CIMultiDict[str]:
        """The headers for the upstream: hop-by-hop removal, then the route's rules (see headers.py)."""
        request, route = self.request, self.matched
        prefer_identity = (route.local_upstream or route.stream == "always"
                           or accepts_stream(request.headers.get("Accept")))
        accept_encoding = upstream_accept_encoding(route.compression, request.headers.get("Accept-Encoding"),
                                                   prefer_identity=prefer_identity)
        hop = Hop(client_ip=request.remote, proto=request.scheme, host=request.headers.get("Host"),
                  trusted=self.snapshot.trusted(request.remote))
        headers = outbound_request_headers(request.headers, route.outbound, hop, accept_encoding)
        headers[REQUEST_ID] = self.request_id  # the upstream's log can name the same request
        return headers

    def refuse(self, error: ProxyError) -> web.Response:
        """The error answer for a failure before the response started: JSON (with CORS headers, so
        a browser page can read why), or for a browser navigation's 502/504 a page (errorpage.py)."""
        record = self.record
        record.outcome, record.error, record.error_type = error.outcome, error.message, error.type
        if self.route is not None and error.route is None:
            error.route = self.route.label
        record.route = record.route or error.route
        headers: CIMultiDict[str] = CIMultiDict(error.headers)
        headers[REQUEST_ID] = self.request_id
        if self.route is not None and self.route.cors is not None:
            cors.decorate(self.route.cors, self.origin, headers)
        if self.route is not None and errorpage.wants_page(error.status, self.request.headers.get("Accept")):
            text, content_type = self._page(error, self.route), "text/html"
        else:
            text, content_type = json.dumps(error.body()), "application/json"
        response = web.Response(status=error.status, headers=headers, content_type=content_type, text=text)
        record.status = response.status
        return response

    def _page(self, error: ProxyError, route: RouteRuntime) -> str:
        """A browser navigation's 502/504: a page naming the route, the upstream and a hint."""
        index = next((i for i, r in enumerate(self.snapshot.routes) if r is route), None)
        key_path = f"routes[{index}].upstream" if index is not None else "the route's upstream"
        return errorpage.render(error, route.label, route.upstreams.urls, key_path, self.request_id)

    def end_hooks(self) -> None:
        for hook in self.hooks:
            try:
                hook.end(self.record)
            except Exception:  # a feature's failure must never take the proxy down with it
                log.exception("a hook failed at the end of a request")
