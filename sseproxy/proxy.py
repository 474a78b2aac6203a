"""The request handler. It reads top to bottom as one request's path through the proxy:

refuse bad targets → admin → allowed hosts → route → CORS preflight → inbound auth → hooks →
(WebSocket) → body limit → outbound request → upstream (502/504 before headers) → stream plan →
``prepare()`` (from here no status can change) → relay → its ending (error frame, truncated close,
release or close the upstream) → one access-log line, metrics, hooks' end.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import logging
import time
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from . import admin, auth, cors, h1, h1pool, resume, websocket
from .accesslog import AccessLog, RequestRecord
from .aiohttp_internals import HeldHeadResponse, ParserRefusal, prepare_now, send_100_continue
from .auth import presented_token
from .errors import BodyTooLarge, Forbidden, NotImplementedCoding, Outcome, ProxyError, UpstreamUnavailable
from .exchange import Exchange, Started
from .h1server import CLIENT_PROTOCOLS
from .limits import Lease
from .pacing import Pacer
from .plan import StreamPlan, plan_response
from .relay_callbacks import CallbackRelay
from .retry import ReplayableBody
from .routing import check_target, find_route, parse_host
from .runtime import Runtime
from .streaming import Relay
from .upstream import OutboundRequest, send

log = logging.getLogger("sseproxy")
Upstream = aiohttp.ClientResponse | h1.H1Response


class BodyLimit:
    """Streams the request body upstream while counting it; over ``limit`` it stops with 413.
    The exchange's hooks see each chunk as it goes."""

    def __init__(self, exchange: Exchange):
        self.exchange = exchange
        self.request = exchange.request
        self.limit = exchange.snapshot.max_body
        self.route = exchange.matched.label
        self.hooks = exchange.hooks
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
        self.exchange.body_sent = False
        async for chunk in self.request.content.iter_any():
            self.received += len(chunk)
            if self.received > self.limit:
                self.exceeded = True
                raise self.error()
            for hook in self.hooks:
                hook.request_body(chunk)
            yield chunk
        self.exchange.body_sent = True


class ProxyHandler:
    """Serves every request on the listening socket."""

    def __init__(self, runtime: Runtime, access_log: AccessLog):
        self.runtime = runtime
        self.access_log = access_log
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None  # asked once: each ask is a getpid() syscall
        self.pacer = Pacer()  # a few requests begun per turn of the loop, so open streams keep flowing
        self.websockets = websocket.WebSocketRelays()  # open WebSocket relays, closed with 1001 at shutdown

    def refused(self, refusal: ParserRefusal) -> None:
        """A request the parser refused before this handler saw it: one access-log line, counted."""
        record = RequestRecord(method="-", path="-", started=0.0, client=refusal.client, status=refusal.status,
                               outcome=Outcome.REFUSED, error=refusal.message, error_type=refusal.type)
        self.access_log.write(record)
        self.runtime.metrics.observe(record)

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        snapshot = self.runtime.enter()  # kept for the whole request, whatever a reload does
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        record = RequestRecord(method=request.method, path=request.raw_path.partition("?")[0],
                               started=loop.time(), client=request.remote)
        exchange = Exchange(next(self._ids), request, snapshot, record, loop)
        try:
            held = self.pacer.turn(loop)  # before the work: a burst of new requests begins a few per turn
            if held is not None:
                await held
            return await self._serve(exchange)
        except ProxyError as error:
            return exchange.refuse(error)
        except asyncio.CancelledError:
            record.outcome = Outcome.CLIENT_CLOSED
            raise
        except Exception:
            record.outcome, record.status = Outcome.INTERNAL, 500
            log.exception("internal error while serving %s %s", request.method, record.path)
            raise
        finally:
            record.total = loop.time() - record.started
            exchange.end_hooks()  # first: hooks add to the record (usage) what the log and metrics show
            self.access_log.write(record)
            self.runtime.metrics.observe(record)
            self.runtime.leave(snapshot)

    async def _serve(self, exchange: Exchange) -> web.StreamResponse:
        request, snapshot, record = exchange.request, exchange.snapshot, exchange.record
        target = exchange.target = check_target(request.method, request.raw_path, request.headers.get("Host"))
        record.path = target.path
        host = parse_host(request.headers.get("Host"))
        if not snapshot.host_allowed(host):
            raise Forbidden(f"host {host!r} is not in allowed_hosts")
        if admin.owns(snapshot.admin_prefix, target.path):
            record.route = "admin"
            record.admin = True  # scrapes and probes are not traffic: logged, not counted in metrics
            response = await admin.respond(self.runtime, target.path, request)
            record.status = response.status
            return response
        check_transfer_coding(request.headers.get("Transfer-Encoding"))
        preflight = cors.is_preflight(request)
        route = find_route(snapshot.routes, target.path, host, request.method, ignore_method=preflight)
        if preflight and route.cors is None:  # not a preflight this proxy answers: methods apply as usual
            preflight = False
            route = find_route(snapshot.routes, target.path, host, request.method)
        exchange.route = route
        record.route = route.label
        if preflight and route.cors is not None:
            response = cors.preflight(route.cors, request.headers, route.label)
            record.status = response.status
            return response
        if snapshot.auth is not None:
            auth.check(snapshot.auth.header, snapshot.auth.tokens, request.headers, route.label)
        exchange.open_hooks(self.runtime)
        if route.websocket and websocket.is_upgrade(request.headers):
            return await self._websocket(exchange)
        return await self._proxy(exchange)

    async def _websocket(self, exchange: Exchange) -> web.StreamResponse:
        """Relay an Upgrade to the upstream; where CORS is configured, a refused Origin gets 403
        (cross-site WebSocket hijacking: browsers send cookies with any page's handshake)."""
        route, origin, target, request = exchange.matched, exchange.origin, exchange.target, exchange.request
        assert target is not None
        if route.cors is not None and origin is not None and not cors.origin_allowed(route.cors, origin):
            raise Forbidden(f"WebSocket from origin {origin} is not allowed", route=route.label)
        websocket.check_handshake(request.method, request.headers)
        limits = exchange.snapshot.websocket
        upstream = await websocket.connect(
            self.runtime.pools, route, OutboundRequest("GET", target.path, target.query, exchange.outbound_headers(),
                                                       None),
            protocols=websocket.subprotocols(request.headers), max_message=limits.max_message)
        record = exchange.record
        record.status = 101
        record.ttfb = exchange.loop.time() - record.started
        relay = websocket.WebSocketRelay(upstream, limits, self.websockets)
        try:
            return await relay.run(exchange.request)
        finally:
            record.bytes, record.events = relay.stats.bytes_to_client, relay.stats.frames
            record.outcome, record.error = relay.stats.outcome, relay.stats.error

    async def _proxy(self, exchange: Exchange) -> web.StreamResponse:
        if exchange.matched.resume is not None and \
                (resumed := await resume.resume_request(exchange, self.runtime)) is not None:
            return resumed  # Last-Event-ID of a resumable stream: served from the store, never upstream
        exchange.lease = self._lease(exchange)
        try:
            upstream = await self._send(exchange)
            return await self._respond(exchange, upstream)
        finally:
            if exchange.started is not None:  # begun where the head arrived: if the client left before
                exchange.started.relay.abandon_unless_run()  # this task got to it, stopped here
                exchange.started = None  # the relay holds the exchange: no cycle left for the collector
            if exchange.lease is not None:  # unless a resumable stream took it on, to hold while detached
                exchange.lease.release()

    def _lease(self, exchange: Exchange) -> Lease | None:
        """One of the route's concurrent-stream slots (``limits``), or 429 when they are all taken."""
        limits, snapshot, request = exchange.matched.limits, exchange.snapshot, exchange.request
        if limits is None:
            return None
        token = presented_token(snapshot.auth.header, request.headers.get(snapshot.auth.header)) \
            if snapshot.auth is not None else None
        lease = limits.acquire(limits.key_for(token=token, client=request.remote))
        if lease is None:
            raise limits.refusal(exchange.matched.label)
        return lease

    async def _send(self, exchange: Exchange) -> Upstream:
        """The upstream's response head, after the retries the route allows: only before anything
        reached the client, to the next upstream first, resending a body kept up to ``retry.max_body``."""
        request, route, record, target = exchange.request, exchange.matched, exchange.record, exchange.target
        assert target is not None
        limit = BodyLimit(exchange)
        limit.check_declared()
        await send_100_continue(request)
        chunks = limit.chunks() if request.body_exists else None
        body = ReplayableBody(chunks, route.retry.max_body, request.content_length) \
            if chunks is not None and route.retry.enabled else None
        outbound = OutboundRequest(request.method, target.path, target.query, exchange.outbound_headers(),
                                   body if body is not None else chunks)
        early = chunks is None and route.resume is None and isinstance(request.protocol, CLIENT_PROTOCOLS)
        on_head = functools.partial(self._start_early, exchange) if early else None
        while True:
            try:
                upstream: Upstream
                if route.plain_http:
                    upstream = await h1pool.send(self.runtime.h1, route, outbound, on_head)
                else:  # TLS upstreams: aiohttp's client
                    upstream = await send(self.runtime.pools, route, outbound)
            except ProxyError:
                if limit.exceeded:
                    raise limit.error() from None
                raise
            if limit.exceeded:
                upstream.close()
                raise limit.error()
            if exchange.started is not None:
                break  # begun where the head arrived: it is answered as it is (_start_early)
            delay = route.retry.next_delay(record.attempts, upstream.status, upstream.headers.get("Retry-After"),
                                           time.time())
            resendable = chunks is None or (body is not None and body.replayable and body.complete)
            if delay is None or not resendable:  # a body not kept whole is never resent in part
                break
            log.info("%s %s: upstream answered %d, retrying in %.3gs (attempt %d of %d)", request.method,
                     record.path, upstream.status, delay, record.attempts + 1, route.retry.attempts)
            upstream.close()  # ends this attempt's body writer before the body is read again
            record.retried.append(upstream.status)
            record.attempts += 1
            await asyncio.sleep(delay)
            if body is not None:
                outbound = dataclasses.replace(outbound, body=body.replay())
        if record.ttfb is None:  # else set where the head arrived
            record.ttfb = exchange.loop.time() - record.started
        if upstream.status == 101:  # switching protocols without being asked: never carried on as HTTP (Go: 502)
            upstream.close()
            raise UpstreamUnavailable("the upstream switched protocols (101) on a request that asked for no upgrade")
        return upstream

    def _start_early(self, exchange: Exchange, upstream: h1.H1Response) -> None:
        """Called where the upstream's head arrives, in its connection's callback: when the handler
        would answer it as it is (no retry, no 101, a usable head), begin the response right there,
        so the first event leaves in this callback, not when the handler's task next runs (in a burst
        of 200 new streams, behind the requests begun the turn before: 0.5 ms at the median, 1.6 at
        the 99th percentile). The handler then relays it on (``_respond``)."""
        route, record = exchange.matched, exchange.record
        if upstream.status == 101 or route.retry.next_delay(
                record.attempts, upstream.status, upstream.headers.get("Retry-After"), time.time()) is not None:
            return
        try:
            plan = plan_response(upstream.headers, route, exchange.origin, exchange.request_id)
        except ValueError:
            return  # the handler answers 502, as for any unusable head
        record.ttfb = exchange.loop.time() - record.started
        self._announce(exchange, upstream, plan)
        response = HeldHeadResponse(status=upstream.status, reason=upstream.reason, headers=plan.headers)
        prepare_now(response, exchange.request)  # the head is held: nothing is written or awaited
        relay = CallbackRelay(exchange, upstream, response, plan)
        exchange.started = Started(response, plan, relay)
        relay.start()

    async def _respond(self, exchange: Exchange, upstream: Upstream) -> web.StreamResponse:
        if exchange.started is not None:  # begun where the head arrived (_start_early)
            started = exchange.started
            return await self._relay(exchange, started.response, started.plan, started.relay)
        request, route, record = exchange.request, exchange.matched, exchange.record
        try:
            plan = plan_response(upstream.headers, route, exchange.origin, exchange.request_id)
        except ValueError as error:
            upstream.close()
            raise UpstreamUnavailable(f"the upstream's response head is unusable: {error}") from None
        self._announce(exchange, upstream, plan)
        if route.resume is not None and plan.sse and (resumed := await resume.serve(exchange, self.runtime, upstream,
                                                                                    plan)) is not None:
            return resumed  # produced into the store, followed by this client (resume.py)
        callbacks = isinstance(upstream, h1.H1Response) and isinstance(request.protocol, CLIENT_PROTOCOLS)
        response_type = HeldHeadResponse if callbacks else web.StreamResponse  # the head leaves with the body
        response = response_type(status=upstream.status, reason=upstream.reason, headers=plan.headers)
        try:  # Nagle is off on every connection already: aiohttp's and the loop's transports set TCP_NODELAY
            await response.prepare(request)
        except ConnectionError:
            upstream.close()  # the client left before the head went out
            record.outcome = Outcome.CLIENT_CLOSED
            return response
        except BaseException:
            upstream.close()  # nothing was relayed: the upstream connection is not reused
            raise
        relay: Relay | CallbackRelay
        if callbacks:
            assert isinstance(upstream, h1.H1Response)
            relay = CallbackRelay(exchange, upstream, response, plan)
        else:
            assert isinstance(upstream, aiohttp.ClientResponse)
            relay = Relay(exchange, upstream, response, plan)
        return await self._relay(exchange, response, plan, relay)

    @staticmethod
    def _announce(exchange: Exchange, upstream: Upstream, plan: StreamPlan) -> None:
        """The response head as the client gets it, to the hooks and the record."""
        for hook in exchange.hooks:
            hook.response(upstream.status, plan.headers, plan.kind)
        exchange.record.status = upstream.status

    async def _relay(self, exchange: Exchange, response: web.StreamResponse, plan: StreamPlan,
                     relay: Relay | CallbackRelay) -> web.StreamResponse:
        """Relay the body to its end; a stream counts as active, and shutdown can end it, meanwhile."""
        record = exchange.record
        if not plan.streams:
            record.outcome = (await relay.run()).outcome
            return response
        metrics = self.runtime.metrics
        active = metrics.series(exchange.matched.label).active
        self.runtime.streams.add(relay)
        metrics.add(active)
        try:
            record.outcome = (await relay.run()).outcome
        finally:
            self.runtime.streams.discard(relay)
            metrics.add(active, -1)
        return response


def check_transfer_coding(value: str | None) -> None:
    """Only ``chunked`` is a transfer coding the proxy implements; ``gzip, chunked`` forwarded as
    plain chunked would hand the upstream a body it cannot read (nginx and Go answer 501)."""
    if value is None:
        return
    codings = [c.strip().lower() for c in value.split(",") if c.strip()]
    if codings != ["chunked"]:
        raise NotImplementedCoding(f"transfer coding {value!r} is not implemented: only chunked is")
