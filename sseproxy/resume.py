"""Resumable streams: an event stream that outlives its client's connection.

On a route with ``resume``, an SSE response is not relayed to the client directly. A ``Producer``
(``resume_producer.py``) reads the upstream body into the store, each event numbered with
``id: <stream-id>.<n>``. Every client, the one that made the request and any that resume with
``Last-Event-ID``, is a follower (``resume_follow.py``): it reads the store from its own position,
then live, and ends the way the stream ended. A follower that leaves only detaches; with no
follower for ``detach`` (on any replica, with a shared store), the upstream is cancelled and the
stream ends with an ``event: error`` of type ``detached``.

``proxy.py`` calls two functions of this module: ``resume_request`` before the upstream is contacted
and ``serve`` in place of a relay.
"""

from __future__ import annotations

import re

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from . import cors, h1
from .auth import presented_token
from .errors import ResumeUnavailable, StreamGone
from .exchange import Exchange
from .hooks import split_upstream
from .plan import StreamPlan
from .requestid import HEADER as REQUEST_ID
from .resume_follow import HEADER, follow
from .resume_producer import Producer
from .resume_store import Head, StoreUnavailable, same_token, stream_key, token_hash
from .runtime import Runtime

_SID = re.compile(r"[A-Za-z0-9_-]{22,64}")


def parse_last_event_id(value: str | None) -> tuple[str, int] | None:
    """``<stream-id>.<n>`` as this proxy issues them, or ``None`` (then it is the app's own id)."""
    if not value:
        return None
    sid, dot, n = value.strip().rpartition(".")
    if not dot or not _SID.fullmatch(sid) or not n.isdigit() or len(n) > 18:
        return None
    return sid, int(n)


async def serve(exchange: Exchange, runtime: Runtime, upstream: h1.H1Response | aiohttp.ClientResponse,
                plan: StreamPlan) -> web.StreamResponse | None:
    """The stream on a resume route: produced into the store, followed by this client. ``None``
    when the store cannot be reached: then the proxy relays it as usual, without ids."""
    settings = exchange.matched.resume
    assert settings is not None
    store = runtime.resume_stores.get(settings.store)
    sid = runtime.resume_stores.ids.new()
    head = Head(upstream.status, upstream.reason or "", tuple(plan.headers.items()))
    try:
        await store.create(sid, head, token_hash(_token(exchange, runtime)), settings.max_bytes, settings.ttl)
    except StoreUnavailable:
        runtime.metrics.resume_store_errors.inc()
        return None
    meters = split_upstream(exchange.writers)
    producer = Producer(runtime, exchange, store, sid, upstream, plan, settings, meters)
    producer.start()
    exchange.record.stream_id = producer.key[:12]
    return await follow(exchange, runtime, store, sid, 0, head, producer, None)


async def resume_request(exchange: Exchange, runtime: Runtime) -> web.StreamResponse | None:
    """A request carrying ``Last-Event-ID: <stream-id>.<n>``: served from the store, never sent
    upstream. ``None`` for any other request."""
    settings = exchange.matched.resume
    assert settings is not None
    parsed = parse_last_event_id(exchange.request.headers.get("Last-Event-ID"))
    if parsed is None:
        return None
    sid, after = parsed
    label, record = exchange.matched.label, exchange.record
    record.stream_id, record.resumed_from = stream_key(sid)[:12], after
    store = runtime.resume_stores.get(settings.store)
    try:
        info = await store.info(sid)
        first = await store.read(sid, after, 0) if info is not None and after <= info.last else None
    except StoreUnavailable:
        runtime.metrics.resumes.labels(label, "unavailable").inc()
        raise ResumeUnavailable("the resume store cannot be reached", route=label) from None
    if (info is None or first is None or first.gone
            or not same_token(info.token_hash, token_hash(_token(exchange, runtime)))):
        runtime.metrics.resumes.labels(label, "gone").inc()
        raise StreamGone("this stream cannot be resumed (unknown, expired, or past a dropped position)",
                         route=label)
    if info.end is not None and after == info.last:
        runtime.metrics.resumes.labels(label, "done").inc()
        headers: CIMultiDict[str] = CIMultiDict({REQUEST_ID: exchange.request_id})
        if exchange.matched.cors is not None:
            cors.decorate(exchange.matched.cors, exchange.origin, headers)
        record.status = 204
        return web.Response(status=204, headers=headers)
    runtime.metrics.resumes.labels(label, "ok").inc()
    producer = runtime.resume_stores.producers.get(stream_key(sid))
    split_upstream(exchange.writers)  # usage is never fed a replay: the producer meters the upstream
    return await follow(exchange, runtime, store, sid, after, info.head, producer, info.last)


def _token(exchange: Exchange, runtime: Runtime) -> str | None:
    auth = exchange.snapshot.auth
    return presented_token(auth.header, exchange.request.headers.get(auth.header)) if auth is not None else None


__all__ = ["HEADER", "parse_last_event_id", "resume_request", "serve"]
