"""The following side of a resumable stream: one client reading it from its own position.

Every client of a resumable stream, the one that made the request and any that resume with
``Last-Event-ID``, is a follower with its own ``StreamResponse`` and heartbeats. Behind, it reads
batches from the store and writes each batch at once. Caught up with a producer in this process, it
is pushed each read's events from the producer's callback and writes them straight to its transport,
with no task woken per event; it drops back to reading whenever it cannot write at once (the client
is slow) or the stream ends. It ends the way the stream ended.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from multidict import CIMultiDict

from .errors import Outcome
from .exchange import Exchange
from .h1server import CLIENT_PROTOCOLS
from .relay_policy import HEARTBEAT
from .requestid import HEADER as REQUEST_ID
from .resume_producer import Producer
from .resume_store import Attachable, Batch, End, Head, Store, StoreUnavailable, stream_key
from .runtime import Runtime

HEADER = "Sseproxy-Stream-Id"
QUIET_WAIT = 30.0  # longest a follower waits on the store at once when heartbeats are off


async def follow(exchange: Exchange, runtime: Runtime, store: Store, sid: str, after: int, head: Head,
                 producer: Attachable | None, replay_until: int | None) -> web.StreamResponse:
    """One client reading the stream from ``after``: stored events, then live ones, then its end.
    Events up to ``replay_until`` count as replayed (a resume's catching up). The exchange's tally
    and writers see what this client is written (not usage: the producer meters that, once)."""
    route, record, metrics = exchange.matched, exchange.record, runtime.metrics
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
    active = metrics.child(metrics.active_streams, route.label)
    metrics.add(active)
    follower = Follower(exchange, runtime, response, store, sid, after, replay_until)
    try:
        if producer is None:  # produced by another replica (or ended): a client here keeps it attached there
            async with store.following(sid):
                record.outcome = await follower.run()
        else:
            record.outcome = await follower.run()
    except ConnectionError:
        record.outcome = Outcome.CLIENT_CLOSED
    finally:
        metrics.add(active, -1)
        if producer is not None:
            producer.detach()
        tally = exchange.tally
        record.bytes, record.events = tally.bytes, tally.events
        if tally.first_event_at is not None:
            record.ttfe = tally.first_event_at - record.started
        if follower.replayed:
            metrics.add(metrics.child(metrics.resume_replayed, route.label), follower.replayed)
    return response


class Follower:
    """One client's position in a stream, and its way of writing."""

    __slots__ = ("_chunked", "_protocol", "_tally", "_transport", "_woken", "_writers", "after", "exchange", "key",
                 "last_write", "loop", "replay_until", "replayed", "response", "runtime", "sid", "store")

    def __init__(self, exchange: Exchange, runtime: Runtime, response: web.StreamResponse, store: Store, sid: str,
                 after: int, replay_until: int | None):
        self.exchange = exchange
        self.runtime = runtime
        self.response = response
        self.store = store
        self.sid = sid
        self.key = stream_key(sid)
        self.after = after
        self.replay_until = replay_until
        self.replayed = 0
        self.loop = exchange.loop
        self.last_write = self.loop.time()
        self._tally = exchange.tally      # written to the client: into the record at the end
        self._writers = exchange.writers  # the list itself: a hook may join while the stream runs
        protocol = exchange.request.protocol
        self._protocol = protocol if isinstance(protocol, CLIENT_PROTOCOLS) else None
        self._chunked = False
        self._transport: asyncio.Transport | None = None  # the client's, once the head is out
        self._woken: asyncio.Future[None] | None = None

    # -- writing ---------------------------------------------------------------------------------
    def _direct(self, data: bytes) -> bool:
        """Writes to the client's transport as a chunk and says so, or says it cannot (paused,
        closing): then ``StreamResponse.write`` waits for the client to drain."""
        protocol, transport = self._protocol, self._transport
        if protocol is None or protocol.writing_paused or transport is None or transport.is_closing():
            return False
        transport.write(b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data)
        return True

    def _sent(self, last: int, data: bytes, count: int, now: float) -> None:
        self.last_write = now
        self.after = last
        self._tally.wrote(len(data), now, count)
        for hook in self._writers:
            hook.data(data, now, count)

    # -- LiveFollower: the producer's pushes -----------------------------------------------------
    def push(self, first: int, last: int, data: bytes, now: float) -> None:
        protocol, transport = self._protocol, self._transport  # _direct and _sent inlined: per event
        if (first != self.after + 1 or protocol is None or protocol.writing_paused or transport is None
                or transport.is_closing()):
            self.wake()  # behind or slow: read from the store
            return
        transport.write(b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data)
        self.last_write = now
        self.after = last
        self._tally.wrote(len(data), now, last - first + 1)
        for hook in self._writers:
            hook.data(data, now, last - first + 1)

    def wake(self) -> None:
        if self._woken is not None and not self._woken.done():
            self._woken.set_result(None)

    async def _live(self, producer: Producer, wait: float) -> None:
        """Follow ``producer``'s pushes until woken, or for ``wait`` seconds."""
        if producer.n > self.after:
            return  # stored since it read: read it first
        woken = self._woken = self.loop.create_future()
        producer.live.add(self)
        timer = self.loop.call_later(wait, self.wake)  # not asyncio.timeout: no task lookup, no uncancel
        try:
            await woken
        finally:
            timer.cancel()
            producer.live.discard(self)
            self._woken = None

    # -- the loop --------------------------------------------------------------------------------
    async def run(self) -> Outcome:
        """The response head, then the stream from this follower's position to its end."""
        await self.response.prepare(self.exchange.request)
        self._chunked = "chunked" in self.response.headers.get("Transfer-Encoding", "")  # as prepare() chose
        self._transport = self.exchange.request.transport
        heartbeat = self.exchange.matched.heartbeat
        record = self.exchange.record
        while True:
            wait = max(0.0, self.last_write + heartbeat - self.loop.time()) if heartbeat > 0 else QUIET_WAIT
            try:
                batch = await self._next(wait)
            except StoreUnavailable:
                self._truncate()
                record.error_type = "resume_unavailable"
                return Outcome.UPSTREAM_ERROR
            if batch.gone:  # this reader fell behind what the store keeps: it reconnects and gets 410
                self._truncate()
                return Outcome.UPSTREAM_ERROR
            if batch.events:
                await self._write_batch(batch)
            if batch.end is not None:
                if batch.end is End.OK:
                    await self.response.write_eof()
                    return Outcome.OK
                self._truncate()
                return Outcome.UPSTREAM_ERROR
            if not batch.events and heartbeat > 0 and self.loop.time() >= self.last_write + heartbeat:
                await self.response.write(HEARTBEAT)
                self.last_write = self.loop.time()
                record.heartbeats += 1

    async def _next(self, wait: float) -> Batch:
        """What is stored after this follower's position; when there is nothing yet, what comes
        within ``wait`` (pushed by a producer here, or read from the store). A stream this process
        holds is read without a coroutine or I/O."""
        batch = self.store.read_now(self.sid, self.after)
        if batch is None:  # held by another replica
            return await self.store.read(self.sid, self.after, wait)
        if batch.events or batch.end is not None or batch.gone:
            return batch
        producer = self.runtime.resume_stores.producers.get(self.key)
        if isinstance(producer, Producer) and not producer.done:
            await self._live(producer, wait)
            batch = self.store.read_now(self.sid, self.after)  # what was not pushed (an end, a slow client)
            return batch if batch is not None else await self.store.read(self.sid, self.after, 0)
        return await self.store.read(self.sid, self.after, wait)

    async def _write_batch(self, batch: Batch) -> None:
        """Stored events, in one write."""
        events = batch.events
        data = events[0][1] if len(events) == 1 else b"".join(data for _, data in events)
        if not self._direct(data):
            await self.response.write(data)
        last = events[-1][0]
        if self.replay_until is not None and events[0][0] <= self.replay_until:
            self.replayed += min(last, self.replay_until) - events[0][0] + 1
        self._sent(last, data, len(events), self.loop.time())

    def _truncate(self) -> None:
        transport = self.exchange.request.transport
        if transport is not None:
            transport.close()  # without the final chunk: a truncated transfer
