"""Resumable streams: an event stream that outlives its client's connection.

On a route with ``resume``, an SSE response is not relayed to the client directly. A ``Producer``
reads the upstream body (callbacks for the lean h1 client, a task for aiohttp's), frames it, gives
each event ``id: <stream-id>.<n>`` as its last line and appends it to the store. Every client, the
one that made the request and any that resume with ``Last-Event-ID``, is a follower: it reads the
store from its own position, then live, with its own ``StreamResponse`` and heartbeats, and ends the
way the stream ended. A follower that leaves only detaches; with no follower for ``detach``, the
upstream is cancelled and the stream ends with an ``event: error`` of type ``detached``.

``proxy.py`` calls two functions of this module: ``resume_request`` before the upstream is contacted
and ``serve`` in place of a relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from . import cors, h1
from .aiohttp_internals import fail_body_when_connection_drops, stop_read_timeout
from .auth import presented_token
from .decoding import DecodeError
from .errors import (
    Detached,
    Outcome,
    ProxyError,
    ResumeUnavailable,
    ShuttingDown,
    StreamGone,
    UpstreamError,
    UpstreamIdle,
)
from .exchange import Exchange
from .framing import LINE_END, MAX_FRAME, SSE_BOUNDARY, SseFramer
from .h1server import CLIENT_PROTOCOLS
from .plan import StreamPlan
from .relay_policy import HEARTBEAT, error_frame
from .requestid import HEADER as REQUEST_ID
from .resume_store import (
    Attachable,
    End,
    Head,
    ResumeSettings,
    Store,
    StoreUnavailable,
    new_stream_id,
    same_token,
    stream_key,
    token_hash,
)
from .runtime import Runtime
from .upstream import mid_stream_error

log = logging.getLogger("sseproxy")
HEADER = "Sseproxy-Stream-Id"
_SID = re.compile(r"[A-Za-z0-9_-]{22,64}")
MAX_COMMENTS = 64 * 1024  # bounds upstream comments held until the next event carries them
QUIET_WAIT = 30.0         # longest a follower waits on the store at once when heartbeats are off


def parse_last_event_id(value: str | None) -> tuple[str, int] | None:
    """``<stream-id>.<n>`` as this proxy issues them, or ``None`` (then it is the app's own id)."""
    if not value:
        return None
    sid, dot, n = value.strip().rpartition(".")
    if not dot or not _SID.fullmatch(sid) or not n.isdigit() or len(n) > 18:
        return None
    return sid, int(n)


def split_frames(out: bytes) -> list[bytes]:
    """Whole events as the framer returned them together, one each (extra blank lines stay with
    the event before them)."""
    frames, start = [], 0
    for m in SSE_BOUNDARY.finditer(out):
        frames.append(out[start:m.end()])
        start = m.end()
    if start < len(out):
        if frames:
            frames[-1] += out[start:]
        else:
            frames.append(out[start:])
    return frames


def with_id(frame: bytes, event_id: str) -> bytes | None:
    """The event with ``id: event_id`` as its last line (an ``id`` of the upstream's replaced), in
    the frame's own line ending; ``None`` for a frame of comments only."""
    found = LINE_END.search(frame)
    eol = found.group() if found else b"\n"
    lines = [line for line in LINE_END.split(frame) if line]
    if all(line.startswith(b":") for line in lines):
        return None
    kept = [line for line in lines if line != b"id" and not line.startswith(b"id:")]
    return eol.join([*kept, b"id: " + event_id.encode()]) + eol + eol


class Producer:
    """Reads one upstream body into the store, whoever follows it."""

    def __init__(self, runtime: Runtime, exchange: Exchange, store: Store, sid: str,
                 upstream: h1.H1Response | aiohttp.ClientResponse, plan: StreamPlan, settings: ResumeSettings):
        self._runtime = runtime
        self._store = store
        self.sid = sid
        self.key = stream_key(sid)
        self._upstream = upstream
        self._decoder = plan.decoder
        self._framer = SseFramer(max_frame=max(MAX_FRAME, settings.max_bytes))
        self._settings = settings
        self._label = exchange.matched.label
        self._idle = exchange.matched.timeouts.idle
        self._body_sent = exchange.body_sent
        self._exchange = exchange
        self._loop = asyncio.get_running_loop()
        self.n = 0
        self.followers = 0
        self._comments = bytearray()
        self._last_read = self._loop.time()
        self._detach_at: float | None = None
        self._poke = asyncio.Event()
        self.done = False
        self._tasks: list[asyncio.Task[None]] = []
        self.live: set[Follower] = set()  # followers caught up: each event is pushed to them as it is stored
        self._lease, exchange.lease = exchange.lease, None  # the limit's slot: held until the stream ends, detached too

    def start(self) -> None:
        self._runtime.resume_stores.producers[self.key] = self
        self._runtime.streams.add(self)
        self._tasks.append(asyncio.create_task(self._watch()))
        if isinstance(self._upstream, h1.H1Response):
            self._upstream.attach(self)
        else:
            self._tasks.append(asyncio.create_task(self._read(self._upstream)))

    # -- followers ------------------------------------------------------------------------------
    def attach(self) -> None:
        if self.followers == 0 and self._detach_at is not None:
            self._runtime.metrics.detached_streams.dec()
        self.followers += 1
        self._detach_at = None
        self._poke.set()

    def detach(self) -> None:
        self.followers -= 1
        if self.followers == 0 and not self.done:
            self._detach_at = self._loop.time() + self._settings.detach
            self._runtime.metrics.detached_streams.inc()
            self._poke.set()

    def stop(self) -> None:
        self._fail(ShuttingDown("sseproxy is shutting down"))

    # -- the upstream body ----------------------------------------------------------------------
    def body(self, data: bytes) -> None:
        """BodySink, from the h1 protocol's callback."""
        if self.done:
            return
        try:
            self._feed(data)
        except ProxyError as error:
            self._fail(error)

    def finished(self, error: BaseException | None) -> None:
        if error is None:
            self._finish()
        else:
            self._fail(error if isinstance(error, ProxyError) else UpstreamError(f"upstream failed: {error!r}"))

    async def _read(self, upstream: aiohttp.ClientResponse) -> None:
        fail_body_when_connection_drops(upstream)
        stop_read_timeout(upstream)
        try:
            while chunk := await upstream.content.readany():
                self._feed(chunk)
                await asyncio.sleep(0)  # a fast upstream never holds the loop
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._fail(mid_stream_error(exc, self._idle))
        except ProxyError as error:
            self._fail(error)
        else:
            self._finish()

    def _feed(self, data: bytes) -> None:
        self._last_read = self._loop.time()
        try:
            pieces = self._decoder.decode(data) if self._decoder is not None else (data,)
            for piece in pieces:
                self._frames(self._framer.feed(piece))
        except DecodeError as exc:
            raise UpstreamError(str(exc)) from exc
        if self._framer.mid_frame:
            raise UpstreamError(f"an event is larger than resume.max_bytes ({self._settings.max_bytes} bytes)")

    def _frames(self, out: bytes) -> None:
        if not out:
            return
        for frame in split_frames(out):
            self.n += 1
            event = with_id(frame, f"{self.sid}.{self.n}")
            if event is None:  # comments: carried by the next event, never numbered alone
                self.n -= 1
                if len(self._comments) + len(frame) <= MAX_COMMENTS:
                    self._comments += frame
                continue
            if self._comments:
                event, self._comments = bytes(self._comments) + event, bytearray()
            self._store.append(self.sid, self.n, event)
            for follower in tuple(self.live):
                follower.push(self.n, event)
            if self.n % 64 == 0:  # the gauge sums every store: not once per event
                self._runtime.metrics.resume_store_bytes.set(self._runtime.resume_stores.bytes)

    # -- the end --------------------------------------------------------------------------------
    def _finish(self) -> None:
        if self.done:
            return
        try:
            tail = self._decoder.flush() if self._decoder is not None else b""
            if tail:
                self._frames(self._framer.feed(tail))
        except (DecodeError, ProxyError) as exc:
            self._fail(exc if isinstance(exc, ProxyError) else UpstreamError(str(exc)))
            return
        rest = self._framer.flush()
        if rest:  # an incomplete last event, passed on as the upstream ended it (clients discard it)
            self.n += 1
            self._store.append(self.sid, self.n, rest)
        self._close(End.OK)
        if self._body_sent:
            self._upstream.release()
        else:
            self._upstream.close()

    def _fail(self, failure: BaseException) -> None:
        if self.done:
            return
        error = failure if isinstance(failure, ProxyError) else UpstreamError(str(failure))
        self.n += 1
        frame = with_id(error_frame(error.type, error.message), f"{self.sid}.{self.n}")
        assert frame is not None
        self._store.append(self.sid, self.n, frame)
        self._upstream.close()  # cancels the upstream request at once: no tokens for nobody
        if isinstance(error, Detached):
            log.info("resumable stream %s on %s: no client for %gs, upstream cancelled", self.key[:12],
                     self._label, self._settings.detach)
        self._close(End.ERROR)

    def _close(self, end: End) -> None:
        self.done = True
        for follower in tuple(self.live):
            follower.wake()  # the end (and an error event) is read from the store
        if self._lease is not None:
            self._lease.release()
        if self.followers == 0 and self._detach_at is not None:
            self._runtime.metrics.detached_streams.dec()
        self._detach_at = None
        self._store.end(self.sid, end)
        self._runtime.resume_stores.producers.pop(self.key, None)
        self._runtime.streams.discard(self)
        self._runtime.metrics.resume_store_bytes.set(self._runtime.resume_stores.bytes)
        self._poke.set()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()

    async def _watch(self) -> None:
        """The idle timeout and the detach clock."""
        while not self.done:
            deadlines = [d for d in (self._detach_at, self._last_read + self._idle if self._idle > 0 else None)
                         if d is not None]
            self._poke.clear()
            if deadlines:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._poke.wait(), max(0.0, min(deadlines) - self._loop.time()))
            else:
                await self._poke.wait()
            now = self._loop.time()
            if self._detach_at is not None and now >= self._detach_at:
                self._fail(Detached(f"no client for {self._settings.detach:g}s"))
            elif self._idle > 0 and now >= self._last_read + self._idle:
                self._fail(UpstreamIdle(f"upstream sent nothing for {self._idle:g}s"))


async def serve(exchange: Exchange, runtime: Runtime, upstream: h1.H1Response | aiohttp.ClientResponse,
                plan: StreamPlan) -> web.StreamResponse | None:
    """The stream on a resume route: produced into the store, followed by this client. ``None``
    when the store cannot be reached: then the proxy relays it as usual, without ids."""
    settings = exchange.matched.resume
    assert settings is not None
    store = runtime.resume_stores.get(settings.store)
    sid = new_stream_id()
    head = Head(upstream.status, upstream.reason or "", tuple(plan.headers.items()))
    try:
        await store.create(sid, head, token_hash(_token(exchange, runtime)), settings.max_bytes, settings.ttl)
    except StoreUnavailable:
        runtime.metrics.resume_store_errors.inc()
        return None
    producer = Producer(runtime, exchange, store, sid, upstream, plan, settings)
    producer.start()
    exchange.record.stream_id = producer.key[:12]
    return await follow(exchange, runtime, store, sid, 0, head, producer, replay_until=None)


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
    return await follow(exchange, runtime, store, sid, after, info.head, producer, replay_until=info.last)


def _token(exchange: Exchange, runtime: Runtime) -> str | None:
    auth = exchange.snapshot.auth
    return presented_token(auth.header, exchange.request.headers.get(auth.header)) if auth is not None else None


async def follow(exchange: Exchange, runtime: Runtime, store: Store, sid: str, after: int, head: Head,
                 producer: Attachable | None, replay_until: int | None) -> web.StreamResponse:
    """One client reading the stream from ``after``: stored events, then live ones, then its end.
    Events up to ``replay_until`` count as replayed (a resume's catching up)."""
    route, record, request = exchange.matched, exchange.record, exchange.request
    headers: CIMultiDict[str] = CIMultiDict(head.headers)
    headers[HEADER] = sid
    headers[REQUEST_ID] = exchange.request_id
    if route.cors is not None:
        expose = [h for h in headers.getall("Access-Control-Expose-Headers", []) if h]
        headers["Access-Control-Expose-Headers"] = ", ".join([*expose, HEADER])
    response = web.StreamResponse(status=head.status, reason=head.reason, headers=headers)
    record.status = head.status
    if producer is not None:
        producer.attach()
    active = runtime.metrics.active_streams.labels(route.label)
    active.inc()
    try:
        await response.prepare(request)
        record.outcome = await _pump(exchange, runtime, response, store, sid, after, replay_until)
    except ConnectionError:
        record.outcome = Outcome.CLIENT_CLOSED
    finally:
        active.dec()
        if producer is not None:
            producer.detach()
    return response


class Follower:
    """One client's position in a stream. Behind, it reads batches from the store; caught up with a
    producer in this process, it is pushed each event from the producer's callback and writes it
    straight to its transport, with no task woken per event. It drops back to reading whenever it
    cannot write at once (the client is slow) or the stream ends."""

    def __init__(self, exchange: Exchange, runtime: Runtime, response: web.StreamResponse, after: int,
                 replay_until: int | None):
        self.exchange = exchange
        self.after = after
        self.replay_until = replay_until
        self.replayed = 0
        self.loop = asyncio.get_running_loop()
        self.last_write = self.loop.time()
        self.write = _writer(exchange, response)
        self._direct = _direct_writer(exchange, response)
        self._woken: asyncio.Future[None] | None = None

    def sent(self, n: int, data: bytes) -> None:
        record = self.exchange.record
        self.last_write = self.loop.time()
        self.after = n
        record.bytes += len(data)
        record.events += 1
        if record.ttfe is None:
            record.ttfe = self.last_write - record.started
        if self.replay_until is not None and n <= self.replay_until:
            self.replayed += 1
        for hook in self.exchange.hooks:
            hook.data(data, self.last_write)

    def push(self, n: int, data: bytes) -> None:
        if n == self.after + 1 and self._direct(data):
            self.sent(n, data)
        else:
            self.wake()  # behind or slow: read from the store

    def wake(self) -> None:
        if self._woken is not None and not self._woken.done():
            self._woken.set_result(None)

    async def live(self, producer: Producer, store: Store, sid: str, wait: float) -> None:
        """Follow ``producer``'s pushes until woken, or for ``wait`` seconds."""
        self._woken = self.loop.create_future()
        producer.live.add(self)
        try:
            info = await store.info(sid)
            if info is not None and info.last > self.after:
                return  # stored while it registered: read it first
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._woken
        finally:
            producer.live.discard(self)
            self._woken = None


async def _pump(exchange: Exchange, runtime: Runtime, response: web.StreamResponse, store: Store, sid: str,
                after: int, replay_until: int | None) -> Outcome:
    route, record = exchange.matched, exchange.record
    heartbeat = route.heartbeat
    loop = asyncio.get_running_loop()
    follower = Follower(exchange, runtime, response, after, replay_until)
    key = stream_key(sid)
    while True:
        wait = max(0.0, follower.last_write + heartbeat - loop.time()) if heartbeat > 0 else QUIET_WAIT
        try:
            batch = await store.read(sid, follower.after, 0)
            producer = runtime.resume_stores.producers.get(key)
            if not batch.events and batch.end is None and not batch.gone and isinstance(producer, Producer) \
                    and not producer.done:
                await follower.live(producer, store, sid, wait)
                continue
            if not batch.events and batch.end is None and not batch.gone:
                batch = await store.read(sid, follower.after, wait)
        except StoreUnavailable:
            _truncate(exchange)
            record.error_type = "resume_unavailable"
            return Outcome.UPSTREAM_ERROR
        if batch.gone:  # this reader fell behind what the store keeps: it reconnects and gets 410
            _truncate(exchange)
            return Outcome.UPSTREAM_ERROR
        for n, data in batch.events:
            await follower.write(data)
            follower.sent(n, data)
        if batch.end is not None:
            if follower.replayed:
                runtime.metrics.resume_replayed.labels(route.label).inc(follower.replayed)
            if batch.end is End.OK:
                await response.write_eof()
                return Outcome.OK
            _truncate(exchange)
            return Outcome.UPSTREAM_ERROR
        if not batch.events and heartbeat > 0 and loop.time() >= follower.last_write + heartbeat:
            await response.write(HEARTBEAT)
            follower.last_write = loop.time()
            record.heartbeats += 1


def _writer(exchange: Exchange, response: web.StreamResponse) -> Callable[[bytes], Awaitable[None]]:
    """Writes an event to the follower: straight to its transport, as a chunk, while the client keeps
    up (no ``StreamResponse.write`` per event); through ``StreamResponse.write``, which waits for the
    client to drain, when it does not."""
    direct = _direct_writer(exchange, response)

    async def write(data: bytes) -> None:
        if not direct(data):
            await response.write(data)

    return write


def _direct_writer(exchange: Exchange, response: web.StreamResponse) -> Callable[[bytes], bool]:
    """Writes to the client's transport as a chunk and says so, or says it cannot (paused, closing)."""
    request = exchange.request
    protocol = request.protocol
    chunked = "chunked" in response.headers.get("Transfer-Encoding", "")  # as prepare() chose

    def direct(data: bytes) -> bool:
        transport = request.transport
        if not isinstance(protocol, CLIENT_PROTOCOLS) or protocol.writing_paused or transport is None \
                or transport.is_closing():
            return False
        transport.write(b"%x\r\n%b\r\n" % (len(data), data) if chunked else data)
        return True

    return direct


def _truncate(exchange: Exchange) -> None:
    transport = exchange.request.transport
    if transport is not None:
        transport.close()  # without the final chunk: a truncated transfer


__all__ = ["HEADER", "Producer", "follow", "parse_last_event_id", "resume_request", "serve", "with_id"]
