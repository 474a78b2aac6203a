"""The request handler. It reads top to bottom as one request's path through the proxy:

refuse bad targets → admin → allowed hosts → route → CORS preflight → inbound auth → body limit →
outbound request → upstream (502/504 before headers) → ``stream_kind()`` → response headers →
``prepare()`` (from here no status can change) → relay → on failure an error frame and a
truncated close → one access-log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import socket
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from . import admin, auth, cors, websocket
from .accesslog import AccessLog, RequestRecord
from .decoding import decoder_for
from .errors import BodyTooLarge, Forbidden, ProxyError, ShuttingDown, UpstreamError, UpstreamIdle
from .framing import StreamKind, accepts_stream, framer_for, stream_kind
from .headers import (
    apply_rules,
    outbound_request_headers,
    stream_response_headers,
    upstream_accept_encoding,
    without_hop_by_hop,
)
from .routing import check_target, find_route, host_without_port
from .runtime import RouteRuntime, Runtime, Snapshot
from .streaming import ClientClosed, Relay, error_frame
from .upstream import fail_body_when_connection_drops, send

log = logging.getLogger("sseproxy")


class BodyLimit:
    """Streams the request body upstream while counting it; over ``limit`` it stops with 413."""

    def __init__(self, request: web.BaseRequest, limit: int, route: str):
        self.request = request
        self.limit = limit
        self.route = route
        self.received = 0
        self.exceeded = False

    def check_declared(self) -> None:
        declared = self.request.content_length
        if declared is not None and declared > self.limit:
            raise BodyTooLarge(f"request body of {declared} bytes is over max_body ({self.limit})",
                               route=self.route)

    def error(self) -> BodyTooLarge:
        return BodyTooLarge(f"request body is over max_body ({self.limit} bytes)", route=self.route)

    async def chunks(self) -> AsyncIterator[bytes]:
        async for chunk in self.request.content.iter_any():
            self.received += len(chunk)
            if self.received > self.limit:
                self.exceeded = True
                raise self.error()
            yield chunk


def error_response(error: ProxyError, snapshot: Snapshot, route: RouteRuntime | None,
                   origin: str | None) -> web.Response:
    headers: CIMultiDict[str] = CIMultiDict(error.headers)
    if route is not None and route.cors is not None:
        cors.decorate(route.cors, origin, headers)
    return web.Response(status=error.status, headers=headers, content_type="application/json",
                        text=json.dumps(error.body()))


class ProxyHandler:
    """Serves every request on the listening socket."""

    def __init__(self, runtime: Runtime, access_log: AccessLog):
        self.runtime = runtime
        self.access_log = access_log
        self._stream_ids = itertools.count(1)
        self.websockets = websocket.WebSocketRelays()

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        snapshot = self.runtime.enter()  # kept for the whole request, whatever a reload does
        loop = asyncio.get_running_loop()
        record = RequestRecord(method=request.method, path=request.raw_path.partition("?")[0],
                               started=loop.time(), client=request.remote)
        route: RouteRuntime | None = None
        try:
            target = check_target(request.method, request.raw_path, request.headers.get("Host"))
            record.path = target.path
            if admin.owns(snapshot.config.admin_prefix, target.path):
                record.route = "admin"
                response = await admin.respond(self.runtime, target.path)
                record.status = response.status
                return response
            host = host_without_port(request.headers.get("Host"))
            if not snapshot.host_allowed(host):
                raise Forbidden(f"host {host!r} is not in allowed_hosts")
            preflight = cors.is_preflight(request)
            route = find_route(snapshot.routes, target.path, host, request.method, ignore_method=preflight)
            record.route = route.label
            if preflight and route.cors is not None:
                return cors.preflight(route.cors, request.headers, route.label)
            if snapshot.config.inbound_auth is not None:
                auth.check(snapshot.config.inbound_auth.header, snapshot.tokens, request.headers, route.label)
            if route.websocket and websocket.is_upgrade(request.headers):
                return await self._websocket(request, snapshot, route, target.path, target.query, record)
            return await self._proxy(request, snapshot, route, target.path, target.query, record)
        except ProxyError as error:
            record.outcome, record.error, record.error_type = "refused", error.message, error.type
            if route is not None and error.route is None:
                error.route = route.label
            response = error_response(error, snapshot, route, request.headers.get("Origin"))
            record.status = response.status
            return response
        except asyncio.CancelledError:
            record.outcome = "client_closed"
            raise
        finally:
            record.total = loop.time() - record.started
            self.access_log.write(record)
            self.runtime.metrics.observe(record)
            self.runtime.leave(snapshot)

    def _outbound_headers(self, request: web.BaseRequest, snapshot: Snapshot,
                          route: RouteRuntime) -> CIMultiDict[str]:
        prefer_identity = (route.local_upstream or route.stream == "always"
                           or accepts_stream(request.headers.get("Accept")))
        return outbound_request_headers(
            request.headers, route.request_rules,
            accept_encoding=upstream_accept_encoding(route.compression, request.headers.get("Accept-Encoding"),
                                                     prefer_identity=prefer_identity),
            client_ip=request.remote, proto=request.scheme, host=request.headers.get("Host"),
            forwarded=route.forwarded, preserve_host=route.preserve_host,
            token_header=snapshot.config.inbound_auth.header if snapshot.config.inbound_auth else None,
        )

    async def _websocket(self, request: web.BaseRequest, snapshot: Snapshot, route: RouteRuntime, path: str,
                         query: str, record: RequestRecord) -> web.StreamResponse:
        """Relay an Upgrade to the upstream; where CORS is configured, a refused Origin gets 403
        (cross-site WebSocket hijacking: browsers send cookies with any page's handshake)."""
        origin = request.headers.get("Origin")
        if route.cors is not None and origin is not None and not cors.origin_allowed(route.cors, origin):
            raise Forbidden(f"WebSocket from origin {origin} is not allowed", route=route.label)
        websocket.check_handshake(request.method, request.headers)
        upstream = await websocket.connect(
            self.runtime.pools, route.upstreams, lambda base: route.upstream_path(base, path), query=query,
            headers=self._outbound_headers(request, snapshot, route),
            protocols=websocket.subprotocols(request.headers), timeouts=route.timeouts,
            max_message=snapshot.config.websocket.max_message)
        record.status = 101
        record.ttfb = asyncio.get_running_loop().time() - record.started
        relay = websocket.WebSocketRelay(upstream, snapshot.config.websocket, self.websockets)
        try:
            return await relay.run(request)
        finally:
            record.bytes, record.events = relay.stats.bytes_to_client, relay.stats.frames
            record.outcome, record.error = relay.stats.outcome.value, relay.stats.error

    async def _proxy(self, request: web.BaseRequest, snapshot: Snapshot, route: RouteRuntime, path: str,
                     query: str, record: RequestRecord) -> web.StreamResponse:
        limit = BodyLimit(request, snapshot.config.max_body, route.label)
        limit.check_declared()
        if request.headers.get("Expect", "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        headers = self._outbound_headers(request, snapshot, route)
        try:
            upstream = await send(
                self.runtime.pools, route.upstreams, lambda base: route.upstream_path(base, path),
                method=request.method, query=query, headers=headers,
                body=limit.chunks() if request.body_exists else None, timeouts=route.timeouts,
            )
        except ProxyError:
            if limit.exceeded:
                raise limit.error() from None
            raise
        if limit.exceeded:
            upstream.close()
            raise limit.error()
        record.ttfb = asyncio.get_running_loop().time() - record.started
        fail_body_when_connection_drops(upstream)
        try:
            response = await self._relay(request, route, upstream, record)
        finally:
            if record.outcome == "ok":
                upstream.release()  # read to the end: the connection goes back to the pool
            else:
                upstream.close()  # cancels the upstream request at once: no tokens generated for nobody
        return response

    async def _relay(self, request: web.BaseRequest, route: RouteRuntime, upstream: aiohttp.ClientResponse,
                     record: RequestRecord) -> web.StreamResponse:
        kind = stream_kind(upstream.headers.get("Content-Type"), route.stream)
        decoder = decoder_for(upstream.headers.get("Content-Encoding")) if kind is not StreamKind.NONE else None
        if kind in (StreamKind.SSE, StreamKind.LINES) and decoder is None and upstream.headers.get(
                "Content-Encoding", "identity").lower() != "identity":
            kind = StreamKind.RAW  # a coding the proxy cannot decode: relay as it comes, never reframed
        headers = without_hop_by_hop(upstream.headers)
        for name in ("Location", "Content-Location"):
            if name in headers:
                headers[name] = route.rewrite_location(headers[name])
        if kind is not StreamKind.NONE:
            stream_response_headers(headers, decoded=decoder is not None)
        apply_rules(headers, route.response_rules)
        if route.cors is not None:
            cors.decorate(route.cors, request.headers.get("Origin"), headers)
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
        record.status = upstream.status
        if kind is not StreamKind.NONE:
            _no_delay(request)
        await response.prepare(request)
        relay = Relay(upstream, response, framer=framer_for(kind), decoder=decoder,
                      heartbeat=route.heartbeat if kind is StreamKind.SSE else 0.0, idle=route.timeouts.idle,
                      on_frames=self._tapper(route, kind))
        active = self.runtime.metrics.active_streams.labels(route.label) if kind is not StreamKind.NONE else None
        if active is not None:
            self.runtime.streams.add(relay)
            active.inc()
        try:
            await relay.run()
            await response.write_eof()
        except (UpstreamError, ShuttingDown) as error:
            record.outcome = {UpstreamIdle: "timeout", ShuttingDown: "shutdown"}.get(type(error), "upstream_error")
            record.error, record.error_type = error.message, error.type
            await self._end_broken(request, relay, kind, error)
        except ClientClosed:
            record.outcome = "client_closed"
        except asyncio.CancelledError:
            record.outcome = "client_closed"
            raise
        finally:
            if active is not None:
                self.runtime.streams.discard(relay)
                active.dec()
            record.bytes, record.events = relay.stats.bytes, relay.stats.events
            record.heartbeats = relay.stats.heartbeats
            if relay.stats.first_event_at is not None:
                record.ttfe = relay.stats.first_event_at - record.started
        return response

    def _tapper(self, route: RouteRuntime, kind: StreamKind) -> Callable[[bytes], None] | None:
        tap = self.runtime.tap
        if tap is None or kind not in (StreamKind.SSE, StreamKind.LINES):
            return None
        stream_id = next(self._stream_ids)
        return lambda frames: tap.frames(route.label, stream_id, frames, sse=kind is StreamKind.SSE)

    async def _end_broken(self, request: web.BaseRequest, relay: Relay, kind: StreamKind,
                          error: ProxyError) -> None:
        """Tell an event stream why it ends, then close without the final chunk: a truncated
        transfer, so no client mistakes a cut-off answer for a complete one."""
        if kind is StreamKind.SSE and relay.between_frames:
            with contextlib.suppress(ClientClosed):
                await relay.write(error_frame(error.type, error.message))
        if request.transport is not None:
            request.transport.close()


def _no_delay(request: web.BaseRequest) -> None:
    """Nagle off for streams, so each event leaves at once (aiohttp sets it too; this makes it sure)."""
    sock = request.transport.get_extra_info("socket") if request.transport is not None else None
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
