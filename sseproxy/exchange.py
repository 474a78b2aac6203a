"""One exchange per request, like Go's ``ProxyRequest{In, Out}``: the inbound request, the snapshot
it keeps to its end, the route, the record that becomes its log line and metrics, and the hooks
features opened on it. Every step of the request path takes the exchange; nothing threads seven
parameters.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict

from . import cors
from .accesslog import RequestRecord
from .errors import ProxyError
from .framing import accepts_stream
from .headers import Hop, outbound_request_headers, upstream_accept_encoding
from .hooks import ExchangeInfo, Hook, open_hooks
from .routing import Target
from .runtime import RouteRuntime, Runtime, Snapshot

log = logging.getLogger("sseproxy")


@dataclass(eq=False)
class Exchange:
    id: int
    request: web.BaseRequest
    snapshot: Snapshot
    record: RequestRecord
    target: Target | None = None
    route: RouteRuntime | None = None
    hooks: tuple[Hook, ...] = ()
    body_sent: bool = True             # False while a request body is still being sent upstream

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
        factories = (*runtime.hooks, *route.hooks)
        if not factories:
            return
        info = ExchangeInfo(id=self.id, route=route.label, method=self.request.method, path=target.path,
                            query=target.query, client=self.request.remote, headers=self.request.headers,
                            started=self.record.started)
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
        return outbound_request_headers(request.headers, route.outbound, hop, accept_encoding)

    def refuse(self, error: ProxyError) -> web.Response:
        """The JSON error answer for a failure before the response started (with CORS headers,
        so a browser page can read why)."""
        record = self.record
        record.outcome, record.error, record.error_type = error.outcome, error.message, error.type
        if self.route is not None and error.route is None:
            error.route = self.route.label
        record.route = record.route or error.route
        headers: CIMultiDict[str] = CIMultiDict(error.headers)
        if self.route is not None and self.route.cors is not None:
            cors.decorate(self.route.cors, self.origin, headers)
        response = web.Response(status=error.status, headers=headers, content_type="application/json",
                                text=json.dumps(error.body()))
        record.status = response.status
        return response

    def end_hooks(self) -> None:
        for hook in self.hooks:
            try:
                hook.end(self.record)
            except Exception:  # a feature's failure must never take the proxy down with it
                log.exception("a hook failed at the end of a request")
