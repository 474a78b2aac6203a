"""The relay carried out in protocol callbacks: upstream bytes go from ``data_received``, through the
de-chunking parser, the decoder and the framer, into the client's ``transport.write``, all in the
same callback: no future, no task switch, no ``StreamResponse.write`` per event.

Backpressure comes from the transports' own flow control: the client's ``pause_writing`` pauses
the upstream's reading and ``resume_writing`` resumes it. One timer per stream, re-armed only when
it fires (never per chunk), carries out the policy's heartbeat and idle deadlines. What to do when
the stream ends is ``relay_policy.ending``, as for the awaiting relay in ``streaming.py``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

from aiohttp import web

from .aiohttp_internals import mark_ended, take_head
from .decoding import DecodeError
from .errors import ProxyError, UpstreamError, UpstreamIdle
from .exchange import Exchange
from .h1 import H1Response
from .h1server import CLIENT_PROTOCOLS
from .plan import StreamPlan
from .relay_policy import HEARTBEAT, Ending, Tick, ending
from .streaming import YIELD_EVERY, RelayState

log = logging.getLogger("sseproxy")


class CallbackRelay(RelayState):
    """Moves one upstream body (from ``h1``) to one client response, in callbacks."""

    __slots__ = (  # one per stream in flight: no instance dict
        "_chunked",
        "_client",
        "_client_left",
        "_client_paused",
        "_decoder",
        "_done",
        "_ended",
        "_head",
        "_held",
        "_pending",
        "_pending_end",
        "_running",
        "_started",
        "_terminated",
        "_timer",
        "_transport",
        "_upstream",
        "_yielding",
    )

    def __init__(self, exchange: Exchange, upstream: H1Response, response: web.StreamResponse, plan: StreamPlan):
        super().__init__(exchange, response, plan)
        self._upstream = upstream
        self._decoder = plan.decoder
        self._transport = exchange.request.transport
        protocol = exchange.request.protocol
        self._client = protocol if isinstance(protocol, CLIENT_PROTOCOLS) else None
        self._chunked = "chunked" in response.headers.get("Transfer-Encoding", "")  # as prepare() chose
        self._done: asyncio.Future[None] = self._loop.create_future()
        self._ended = False  # _done is done: a plain flag, read per event where a call would cost more
        self._client_left = False
        self._client_paused = False
        self._yielding = False
        self._pending: Iterator[bytes] | None = None   # decoded pieces not yet relayed (a bomb, yielding)
        self._pending_end: tuple[BaseException | None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._head = b""  # the response head, held until the first write (HeldHeadResponse)
        self._held: bytes | None = None  # writes held while the stream ends, to leave with its end
        self._terminated = False  # the body's end was written (``_release``)
        self._started = False  # the upstream's body comes here (``start``)
        self._running = False  # the handler awaits the end (``run``)

    def start(self) -> None:
        """Take the upstream's body from here on, in its callbacks: the body bytes that came with the
        head leave with it, in this call. Called by ``run``, or earlier from the upstream's callback
        where the head arrived (``proxy``), so the first event does not wait for the handler's task."""
        if self._started:
            return
        self._started = True
        if self._client is not None:
            self._client.flow = self
            self._client_paused = self._client.writing_paused
        self._arm()
        self._head = take_head(self._response)
        try:
            self._upstream.attach(self)  # relays the body bytes that came with the head, in this call
        except Exception:  # the proxy's own failure (a hook's), as in the upstream's callback (h1)
            log.exception("internal error while relaying an upstream body")
            self._fail(UpstreamError("the proxy failed while relaying the upstream's body"))
        if self._head:
            self._write_head()  # no body yet: the head goes now, on its own
        self._update_reading()

    async def run(self) -> Ending:
        self.start()
        self._running = True
        try:
            await self._done
        except asyncio.CancelledError:  # the client hung up: the handler is cancelled (and _done with it)
            self._abandon()
            raise
        finally:
            self._stop()
        if self._failure is None and not self._client_left and not self._terminated:
            try:
                await self._response.write_eof()
            except ConnectionError:
                self._client_left = True
        end = ending(self._failure, client_left=self._client_left, sse=self._plan.sse,
                     between_frames=self.between_frames, body_sent=self._exchange.body_sent)
        if end.error_frame is not None:
            self._write(end.error_frame)
        if end.truncate and self._transport is not None:
            self._transport.close()  # without the final chunk: a truncated transfer
        if end.release:
            self._upstream.release()
        else:
            self._upstream.close()
        return end

    def abandon_unless_run(self) -> None:
        """The handler ended (the client left) before it ran this relay, which the upstream's
        callback started: close the upstream and stop as ``run`` would have."""
        if self._started and not self._running:
            self._abandon()
            self._stop()

    def _abandon(self) -> None:
        self._ended = True
        self._upstream.close()

    def _stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._client is not None and self._client.flow is self:
            self._client.flow = None
        self._fill_record()

    # -- the client's flow control (ProxyProtocol calls these) ----------------------------------
    def client_paused(self) -> None:
        self._client_paused = True
        self._update_reading()

    def client_resumed(self) -> None:
        self._client_paused = False
        self._update_reading()

    def _update_reading(self) -> None:
        if self._client_paused or self._yielding:
            self._upstream.pause()
        else:
            self._upstream.resume()

    # -- BodySink: called from the upstream protocol --------------------------------------------
    def body(self, data: bytes, decoded: bool = False) -> None:
        """The body bytes of one upstream read (or, with ``decoded``, one decoded piece of them), and
        the path every event takes, in one call: the clock read once, the framer, the write, the
        hooks. Each Python call on it costs most when the stream is quiet between events (cold caches:
        about 35 µs an event at one stream, against 12 µs at 200), so it makes as few as it can."""
        if self._ended:
            return
        now = self._loop.time()
        policy = self.policy
        policy.last_read = now  # every read restarts the idle clock, decoded to bytes or not
        if self._decoder is not None and not decoded:
            self._pending = self._decoder.decode(data)
            self._relay_pending()
            return
        framer = self.framer
        frames = 0
        if framer is None:
            out = data
        else:
            out = framer.feed(data)
            if not out:
                return
            frames, self._reported = framer.frames - self._reported, framer.frames
        transport = self._transport
        if self._head or self._held is not None or transport is None or transport.is_closing():
            self._write(out, now)  # the first write, the last ones, or to a client gone
        else:  # _write, in line: the path of every event once the stream runs
            policy.last_write = now
            self.bytes += len(out)
            transport.write(b"%x\r\n%b\r\n" % (len(out), out) if self._chunked else out)
        self._tally.wrote(len(out), now, frames)  # RelayState._tell, in line: one call fewer per event
        for hook in self._hooks:
            hook.data(out, now, frames)

    def finished(self, error: BaseException | None, last: bytes = b"") -> None:
        if self._ended:
            return
        if last and (error is not None or self._decoder is not None):
            self.body(last)  # decoded (it may take turns of the loop), or followed by a failure: as any read
            last = b""
            if self._ended:
                return
        if self._pending is not None:
            self._pending_end = (error,)  # after the decoded pieces still waiting their turn
            return
        if error is not None:
            self._fail(error if isinstance(error, ProxyError) else UpstreamError(f"upstream failed: {error!r}"))
            return
        self._held = b""  # the last events, an incomplete last frame and the body's end leave in one write
        try:
            if last:
                self.body(last)
            tail = self._decoder.flush() if self._decoder is not None else b""
            if tail:
                self.body(tail, decoded=True)
        except DecodeError as exc:
            self._release(end=False)
            self._fail(UpstreamError(str(exc)))
            return
        rest = self.framer.flush() if self.framer is not None else b""
        if rest:  # an incomplete last frame, passed on as the upstream ended it
            now = self._loop.time()
            self._write(rest, now)
            self._tell(rest, now)
        self._release(end=True)
        self._finish()

    def _release(self, end: bool) -> None:
        """Write what was held (with the head, if it is still held), and with ``end`` the body's last
        chunk; the response then counts as ended (``mark_ended``): its ``write_eof`` writes nothing."""
        out, self._held = self._head + (self._held or b""), None
        self._head = b""
        transport = self._transport
        if transport is None or transport.is_closing():
            self._client_left = True
            return
        if end:
            if self._chunked:
                out += b"0\r\n\r\n"
            mark_ended(self._response)
            self._terminated = True
        if out:
            transport.write(out)

    def _relay_pending(self) -> None:
        """Relay decoded pieces; after ``YIELD_EVERY`` bytes, let the loop run others and go on
        from a fresh callback (reading paused meanwhile), so a bomb never holds the loop."""
        pieces, work = self._pending, 0
        assert pieces is not None
        try:
            for piece in pieces:
                self.body(piece, decoded=True)
                work += len(piece)
                if self._ended:
                    break
                if work >= YIELD_EVERY:
                    self._yielding = True
                    self._update_reading()
                    self._loop.call_soon(self._relay_pending)
                    return
        except DecodeError as exc:
            self._pending = None
            self._fail(UpstreamError(str(exc)))
            return
        self._pending = None
        if self._yielding:
            self._yielding = False
            self._update_reading()
        if self._pending_end is not None:
            (error,), self._pending_end = self._pending_end, None
            self.finished(error)

    def _write(self, data: bytes, now: float | None = None) -> None:
        """Body data (or the proxy's own heartbeat or error frame) to the client, chunked as
        ``prepare()`` chose; the held head goes with the first of it."""
        transport = self._transport
        if transport is None or transport.is_closing():
            self._client_left = True
            self._finish()
            return
        self.policy.last_write = self._loop.time() if now is None else now
        self.bytes += len(data)
        out = b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data
        if self._head:
            out, self._head = self._head + out, b""
        if self._held is not None:
            self._held += out  # the stream is ending: this goes with the body's end (``finished``)
            return
        transport.write(out)

    def _write_head(self) -> None:
        head, self._head = self._head, b""
        transport = self._transport
        if transport is None or transport.is_closing():
            self._client_left = True
            self._finish()
            return
        transport.write(head)

    # -- the stream's one timer -----------------------------------------------------------------
    def _arm(self) -> None:
        deadline = self.policy.deadline()
        if deadline is not None and not self._ended:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        tick = self.policy.tick(self._loop.time(), self.between_frames)
        if tick is Tick.HEARTBEAT:
            self._write(HEARTBEAT)
            self.heartbeats += 1
        elif tick is Tick.IDLE:
            self._fail(UpstreamIdle(f"upstream sent nothing for {self.policy.idle:g}s"))
            return
        self._arm()

    def _fail(self, failure: ProxyError) -> None:
        if self._ended:
            return
        self._failure = failure
        self._upstream.close()  # the upstream request is cancelled at once
        self._finish()

    def _finish(self) -> None:
        if not self._ended:
            self._ended = True
            if not self._done.done():
                self._done.set_result(None)
