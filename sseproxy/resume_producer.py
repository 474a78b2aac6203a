"""The producing side of a resumable stream: one upstream body, numbered into the store.

A ``Producer`` reads the upstream body (callbacks for the lean h1 client, a task for aiohttp's),
frames it, gives each event ``id: <stream-id>.<n>`` as its last line, appends it to the store and
pushes it to the followers in this process that are caught up. Nothing here waits on a client.

Its cost is paid per event on the proxy's hot path, so it does per read what it can do once: one
``loop.time()``, one bytes format for the common event (one frame, LF endings, no ``id:`` of the
upstream's), one push per follower. Its timers (the idle timeout and the detach clock) are one
timer handle, re-armed only when it fires, never a task. An upstream that sends faster than it can
be numbered gets ``BURST`` bytes a loop turn, so ten such streams share the process evenly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, Protocol

import aiohttp

from . import h1
from .aiohttp_internals import fail_body_when_connection_drops, stop_read_timeout
from .decoding import DecodeError
from .errors import Detached, ProxyError, ShuttingDown, UpstreamError, UpstreamIdle
from .exchange import Exchange
from .framing import CR, LINE_END, MAX_FRAME, SSE_BOUNDARY, SseFramer, StreamKind, count_frames
from .hooks import Hook
from .plan import StreamPlan
from .relay_policy import error_frame
from .resume_store import End, ResumeSettings, Store, stream_key
from .runtime import Runtime
from .upstream import mid_stream_error
from .usage import late_tokens

log = logging.getLogger("sseproxy")
MAX_COMMENTS = 64 * 1024  # bounds upstream comments held until the next event carries them
GAUGE_EVERY = 64          # events between updates of the store-bytes gauge (it sums every store)
BURST = 64 * 1024         # upstream bytes a producer handles a loop turn (more is paid off in later turns)
QUIET = 0.001             # seconds between reads after which a stream's balance is forgiven (a later turn)


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


class EventFramer(SseFramer):
    """The SSE framer, also saying whether what it returned last had LF line endings only: it
    looks for a CR to count events anyway, so the producer need not look again."""

    lf_only = True

    def _count(self, data: bytes | bytearray) -> int:
        self.lf_only = CR not in data
        return data.count(b"\n\n") if self.lf_only else count_frames(StreamKind.SSE, data)


def plain_event(out: bytes, frames: int, lf_only: bool) -> bool:
    """Whether ``out``, as an ``EventFramer`` returned it (it ends with a blank line), in which it
    counted ``frames`` events and ``lf_only`` says it saw no CR, is one event that ``with_id`` would
    only append to: its first line is no comment (a comment-only frame starts with one) nor blank,
    it ends with one blank line, and no line starts with ``id``. Most events of most streams are:
    they then cost one bytes format instead of a split and a join."""
    return (frames == 1 and lf_only and out[0] not in b":\n" and out[-3] != 10 and not out.startswith(b"id")
            and out.find(b"\nid") < 0)  # not ``in``: see framing.CR


class LiveFollower(Protocol):
    """A follower caught up with the producer: handed events as they are stored."""

    def push(self, first: int, last: int, data: bytes, now: float) -> None:
        """Events ``first``..``last``, together in ``data``, stored at ``now`` (loop time)."""

    def wake(self) -> None:
        """Read from the store now: the stream ended, or an event was not pushed."""


class Producer:
    """Reads one upstream body into the store, whoever follows it."""

    __slots__ = ("_append", "_attaches", "_body_sent", "_burst", "_comments", "_decoder", "_detach_at", "_detached",
                 "_elsewhere", "_framer", "_gauge_at", "_id_prefix", "_idle", "_label", "_last_read", "_lease", "_loop",
                 "_meters", "_runtime", "_settings", "_store", "_tasks", "_timer", "_upstream", "done", "followers",
                 "key", "live", "n", "sid")

    def __init__(self, runtime: Runtime, exchange: Exchange, store: Store, sid: str,
                 upstream: h1.H1Response | aiohttp.ClientResponse, plan: StreamPlan, settings: ResumeSettings,
                 meters: tuple[Hook, ...]):
        self._runtime = runtime
        self._store = store
        self._append = store.appender(sid)
        self.sid = sid
        self.key = stream_key(sid)
        self._id_prefix = b"id: " + sid.encode() + b"."
        self._upstream = upstream
        self._decoder = plan.decoder
        self._framer = EventFramer(max_frame=max(MAX_FRAME, settings.max_bytes))
        self._settings = settings
        route = exchange.matched
        self._label = route.label
        self._idle = route.timeouts.idle
        self._body_sent = exchange.body_sent
        self._meters = meters  # usage is the upstream's: metered here, once, whoever follows (hooks.split_upstream)
        self._loop = exchange.loop
        self.n = 0                 # the last stored event's number
        self._gauge_at = GAUGE_EVERY
        self.followers = 0
        self._comments = b""
        self._burst = 0            # upstream bytes read close together and not yet paid off by a turn sat out
        self._last_read = self._loop.time()
        self._detach_at: float | None = None  # when the detach clock runs out (None: running, or being checked)
        self._detached = False                # counted in the detached-streams gauge
        self._attaches = 0                    # attaches so far: a detach check finding more knows it is stale
        self._elsewhere = False               # a check found a client following on another replica
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()   # aiohttp's body reader; a detach check on a shared store
        self.done = False
        self.live: set[LiveFollower] = set()  # followers caught up: each event is pushed to them as it is stored
        self._lease, exchange.lease = exchange.lease, None  # the limit's slot: held until the stream ends, detached too

    def start(self) -> None:
        self._runtime.resume_stores.producers[self.key] = self
        self._runtime.streams.add(self)
        self._arm()
        if isinstance(self._upstream, h1.H1Response):
            self._upstream.attach(self)
        else:
            self._spawn(self._read(self._upstream))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- followers ------------------------------------------------------------------------------
    def attach(self) -> None:
        self._set_detached(False)
        self.followers += 1
        self._attaches += 1
        self._detach_at = None

    def detach(self) -> None:
        self.followers -= 1
        if self.followers == 0 and not self.done:
            self._detach_at = self._loop.time() + self._settings.detach
            self._set_detached(True)
            self._arm()

    def _set_detached(self, detached: bool) -> None:
        if detached != self._detached:
            self._detached = detached
            gauge = self._runtime.metrics.detached_streams
            if detached:
                gauge.inc()
            else:
                gauge.dec()

    def stop(self) -> None:
        self._fail(ShuttingDown("sseproxy is shutting down"))

    # -- the upstream body ----------------------------------------------------------------------
    def body(self, data: bytes) -> None:
        """BodySink, from the h1 protocol's callback: once per upstream read, so ``_feed`` is inlined
        for the common case (no decoder)."""
        if self.done:
            return
        last = self._last_read
        if self._decoder is not None:
            try:
                self._feed(data)
            except ProxyError as error:
                self._fail(error)
        else:
            now = self._last_read = self._loop.time()
            framer = self._framer
            before = framer.frames
            out = framer.feed(data)
            if out:
                self._frames(out, framer.frames - before, now)
            if framer.mid_frame:
                self._fail(self._too_large())
        if self._last_read - last > QUIET:  # the first read after a quiet spell owes nothing
            self._burst = 0
        self._burst += len(data)
        if self._burst >= BURST and not self.done:
            self._sit_out()

    def _sit_out(self) -> None:
        """Stop reading until the loop has turned. uvloop (libuv) reads a readable socket up to 32
        times in one callback, 8 MiB at 256 KiB a read; numbering that many events held the loop
        for hundreds of milliseconds, so under a flood it turned a few times a second, new requests
        waited seconds to be accepted, and the streams whose sockets held most took nearly all of
        it. Now each stream handles about ``BURST`` a turn, and followers and new requests get
        their turn in between."""
        upstream = self._upstream
        assert isinstance(upstream, h1.H1Response)  # ``body`` is h1's sink; aiohttp's is read by ``_read``
        upstream.pause()
        self._loop.call_soon(self._turn, upstream)

    def _turn(self, upstream: h1.H1Response) -> None:
        """The loop turned: one ``BURST`` of what this stream read is paid off, and reading resumes
        once less than one is owed. A stream that read 256 KiB at once sits out the next turns
        while one whose reads were smaller goes on (a deficit round robin): the share each gets
        does not depend on how much its socket happened to hold."""
        self._burst -= BURST
        if self.done:
            return
        if self._burst >= BURST:
            self._loop.call_soon(self._turn, upstream)
        else:
            upstream.resume()

    def finished(self, error: BaseException | None, last: bytes = b"") -> None:
        if last:
            self.body(last)
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
        now = self._last_read = self._loop.time()
        try:
            for piece in self._decoder.decode(data) if self._decoder is not None else (data,):
                self._framed(piece, now)
        except DecodeError as exc:
            raise UpstreamError(str(exc)) from exc
        if self._framer.mid_frame:
            raise self._too_large()

    def _framed(self, piece: bytes, now: float) -> None:
        before = self._framer.frames
        out = self._framer.feed(piece)
        if out:
            self._frames(out, self._framer.frames - before, now)

    def _too_large(self) -> UpstreamError:
        return UpstreamError(f"an event is larger than resume.max_bytes ({self._settings.max_bytes} bytes)")

    def _frames(self, out: bytes, frames: int, now: float) -> None:
        """Number, push and store the events the framer completed in one read. Followers are
        written to first: storing and metering are not on the way to the client. A push never
        changes ``live``: a follower leaves it from its own task."""
        first = self.n + 1
        if not self._comments and plain_event(out, frames, self._framer.lf_only):
            data = b"%b%b%d\n\n" % (out[:-1], self._id_prefix, first)
            self.n = first
            for follower in self.live:
                follower.push(first, first, data, now)
            self._append(first, data)
        else:
            events = self._numbered(out, first)
            if not events:
                return  # comments only: they ride with the next event
            data = events[0] if len(events) == 1 else b"".join(events)
            self.n = first + len(events) - 1
            for follower in self.live:
                follower.push(first, self.n, data, now)
            for n, event in enumerate(events, first):
                self._append(n, event)
        for hook in self._meters:
            hook.data(data, now, self.n - first + 1)
        if self.n >= self._gauge_at:  # the gauge sums every store: not once per event
            self._gauge_at = self.n + GAUGE_EVERY
            self._runtime.resume_stores.publish(self._runtime.metrics.resume_store_bytes, now)

    def _numbered(self, out: bytes, first: int) -> list[bytes]:
        """The general case: each event of ``out`` numbered from ``first`` (comments held for the next)."""
        events: list[bytes] = []
        for frame in split_frames(out):
            event = with_id(frame, f"{self.sid}.{first + len(events)}")
            if event is None:  # comments: carried by the next event, never numbered alone
                if len(self._comments) + len(frame) <= MAX_COMMENTS:
                    self._comments += frame
                continue
            if self._comments:
                event, self._comments = self._comments + event, b""
            events.append(event)
        return events

    # -- the end --------------------------------------------------------------------------------
    def _finish(self) -> None:
        if self.done:
            return
        try:
            tail = self._decoder.flush() if self._decoder is not None else b""
            if tail:
                self._framed(tail, self._loop.time())
        except (DecodeError, ProxyError) as exc:
            self._fail(exc if isinstance(exc, ProxyError) else UpstreamError(str(exc)))
            return
        rest = self._framer.flush()
        if rest:  # an incomplete last event, passed on as the upstream ended it (clients discard it)
            self.n += 1
            self._append(self.n, rest)
            for hook in self._meters:
                hook.data(rest, self._loop.time(), 0)  # an incomplete frame
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
        self._append(self.n, frame)
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
        self._set_detached(False)
        self._detach_at = None
        if self._timer is not None:
            self._timer.cancel()
        self._store.end(self.sid, end)
        stores = self._runtime.resume_stores
        stores.producers.pop(self.key, None)
        stores.publish(self._runtime.metrics.resume_store_bytes, self._loop.time())
        self._runtime.streams.discard(self)
        for hook in self._meters:  # usage that came after the starting request ended: counted here, once
            tokens_in, tokens_out = late_tokens(hook)
            self._runtime.metrics.count_tokens(self._label, tokens_in, tokens_out)
        if self._tasks:
            current = asyncio.current_task()
            for task in tuple(self._tasks):
                if task is not current:
                    task.cancel()

    # -- the timer: the idle timeout and the detach clock ---------------------------------------
    def _arm(self) -> None:
        """One timer for the earliest deadline. The idle deadline moves with every read, but the
        timer is only re-armed when it fires (then it finds the deadline later and waits again)."""
        due = self._last_read + self._idle if self._idle > 0 else None
        if self._detach_at is not None and (due is None or self._detach_at < due):
            due = self._detach_at
        if self.done or due is None:
            return
        if self._timer is not None:
            if not self._timer.cancelled() and self._timer.when() <= due:
                return  # it fires first: it re-arms then
            self._timer.cancel()
        self._timer = self._loop.call_at(due, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = self._loop.time()
        if self._detach_at is not None and now >= self._detach_at:
            self._detach_at = None  # checked once: re-set by the check if a client elsewhere follows
            self._spawn(self._detach_expired())
        elif self._idle > 0 and now >= self._last_read + self._idle:
            self._fail(UpstreamIdle(f"upstream sent nothing for {self._idle:g}s"))
            return
        self._arm()

    async def _detach_expired(self) -> None:
        """No client here for ``detach``: cancel, unless a client follows the stream on another
        replica (a shared store), or left it less than ``detach`` ago; then check again later."""
        attaches = self._attaches
        since = await self._store.followed_elsewhere(self.sid)
        if self.done or self._attaches != attaches:
            return  # ended, or a client attached here while the store was asked (its detach re-armed)
        detach = self._settings.detach
        if since is None or since >= detach:
            self._fail(Detached(f"no client for {detach:g}s"))
            return
        if since < 0:
            log.log(logging.INFO if not self._elsewhere else logging.DEBUG,
                    "resumable stream %s on %s: no client here for %gs, but one follows it on another replica: "
                    "kept", self.key[:12], self._label, detach)
            self._elsewhere = True
        self._detach_at = self._loop.time() + detach - max(since, 0.0)
        self._arm()
