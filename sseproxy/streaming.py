"""The relay: read what arrived, decode, frame, write each whole frame at once.

Each ``await write()`` goes out immediately and waits only when the client's socket buffer is
full, which is where backpressure comes from: the upstream is not read while the client lags.
What to do when time passes (heartbeat, idle) and how to end is ``relay_policy``'s decision; this
module only carries it out. Features see the frames through the exchange's hooks.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
from aiohttp import web

from .aiohttp_internals import (
    GuardedResponseHandler,
    fail_body_when_connection_drops,
    stop_read_timeout,
    upstream_protocol,
)
from .decoding import DecodeError
from .errors import ProxyError, ShuttingDown, UpstreamError, UpstreamIdle
from .exchange import Exchange
from .plan import StreamPlan
from .relay_policy import HEARTBEAT, Ending, RelayPolicy, Tick, ending
from .upstream import mid_stream_error

YIELD_EVERY = 256 * 1024  # bytes of upstream data (decoded) one stream may process before others get a turn


class ClientClosed(ConnectionError):
    """The client went away while the proxy was writing to it."""


class RelayState:
    """What both relays (this awaiting one and ``relay_callbacks``' one) keep of a stream: its plan,
    framer and policy, what it sent, and how that goes into the exchange's record."""

    __slots__ = (  # one per stream in flight: no instance dict
        "_exchange",
        "_failure",
        "_hooks",
        "_loop",
        "_plan",
        "_reported",
        "_response",
        "_tally",
        "bytes",
        "framer",
        "heartbeats",
        "policy",
    )

    def __init__(self, exchange: Exchange, response: web.StreamResponse, plan: StreamPlan):
        route = exchange.matched
        self._exchange = exchange
        self._response = response
        self._plan = plan
        self._hooks = exchange.writers  # the list itself: a hook may join or leave while the stream runs
        self._tally = exchange.tally
        self.framer = plan.framer()
        self._loop = exchange.loop
        now = self._loop.time()
        self.policy = RelayPolicy(heartbeat=route.heartbeat if plan.sse else 0.0,
                                  idle=route.timeouts.idle, last_read=now, last_write=now)
        self._failure: ProxyError | None = None
        self.bytes = self.heartbeats = 0
        self._reported = 0  # frames the tally has been told of

    def _tell(self, data: bytes, at: float) -> None:
        """The tally and the writers see ``data`` as written, with the whole frames the framer
        completed since the last time (an incomplete last frame, flushed at the end, is none)."""
        framer = self.framer
        frames = 0
        if framer is not None:
            frames, self._reported = framer.frames - self._reported, framer.frames
        self._tally.wrote(len(data), at, frames)
        for hook in self._hooks:
            hook.data(data, at, frames)

    @property
    def between_frames(self) -> bool:
        return self.framer is None or not self.framer.mid_frame

    @property
    def events(self) -> int:
        return self.framer.frames if self.framer is not None else 0

    def stop(self) -> None:
        """End this stream for shutdown, with a ``shutdown`` error event."""
        self._fail(ShuttingDown("sseproxy is shutting down"))

    def _fail(self, failure: ProxyError) -> None:
        raise NotImplementedError

    def _framed(self, piece: bytes) -> bytes:
        """The whole frames ``piece`` completes (all of it when the stream is not framed)."""
        framer = self.framer
        return piece if framer is None else framer.feed(piece)

    def _fill_record(self) -> None:
        record = self._exchange.record
        record.bytes, record.events, record.heartbeats = self.bytes, self.events, self.heartbeats
        if self._failure is not None:
            record.error, record.error_type = self._failure.message, self._failure.type
        first_event_at = self._tally.first_event_at
        if first_event_at is not None:
            record.ttfe = first_event_at - record.started


class Relay(RelayState):
    """Moves one upstream body to one client response, awaiting each read and write, then ends it
    as the policy says. Used for TLS upstreams (aiohttp's client); plain-http ones take the callbacks."""

    __slots__ = ("_protocol", "_upstream")  # one per stream in flight: no instance dict

    def __init__(self, exchange: Exchange, upstream: aiohttp.ClientResponse, response: web.StreamResponse,
                 plan: StreamPlan):
        super().__init__(exchange, response, plan)
        self._upstream = upstream
        self._protocol: GuardedResponseHandler | None = None

    def _fail(self, failure: ProxyError) -> None:
        if self._failure is None:
            self._failure = failure
        self._upstream.close()  # the pending read fails at once

    async def run(self) -> Ending:
        """Relay to the end; returns how it ended, after carrying that out (error frame, close)."""
        fail_body_when_connection_drops(self._upstream)
        stop_read_timeout(self._upstream)
        self._protocol = upstream_protocol(self._upstream)
        watch = asyncio.create_task(self._watch()) if self.policy.deadline() is not None else None
        client_left = False
        try:
            await self._pump()
            try:
                await self._response.write_eof()
            except ConnectionError as exc:
                raise ClientClosed(str(exc)) from exc
        except ClientClosed:
            client_left = True
        except ProxyError as error:
            self._failure = self._failure or error
        except asyncio.CancelledError:  # the client hung up: the handler is cancelled
            self._upstream.close()
            raise
        finally:
            if watch is not None:
                watch.cancel()
            self._fill_record()
        end = ending(self._failure, client_left=client_left, sse=self._plan.sse, between_frames=self.between_frames,
                     body_sent=self._exchange.body_sent)
        await self._carry_out(end)
        return end

    async def _carry_out(self, end: Ending) -> None:
        if end.error_frame is not None:
            with contextlib.suppress(ClientClosed):
                await self._write(end.error_frame)
        if end.truncate:
            transport = self._exchange.request.transport
            if transport is not None:
                transport.close()  # without the final chunk: a truncated transfer
        if end.release:
            self._upstream.release()  # read to the end: the connection goes back to the pool
        else:
            self._upstream.close()  # cancels the upstream request at once: no tokens generated for nobody

    async def _pump(self) -> None:
        read = self._upstream.content.readany
        decoder = self._plan.decoder
        policy, loop = self.policy, self._loop
        work = 0  # bytes processed since this stream last let the loop run others
        while True:
            try:
                chunk = await read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise self._failure or mid_stream_error(exc, policy.idle) from exc
            if not chunk:
                break
            policy.read(loop.time())
            if decoder is None:
                await self._emit(chunk)
                work += len(chunk)
            else:
                try:
                    for piece in decoder.decode(chunk):
                        await self._emit(piece)
                        work += len(piece)
                        if work >= YIELD_EVERY:
                            work = await _yield()
                except DecodeError as exc:
                    raise UpstreamError(str(exc)) from exc
            if work >= YIELD_EVERY:
                # a fast upstream and a fast client never make a read or a write wait, so without
                # this one stream (a gzip bomb, a flood of newlines) would hold the loop for seconds
                work = await _yield()
        if self._failure is not None:  # a read that ended because the policy failed the stream
            raise self._failure
        if self._protocol is not None and self._protocol.reset_mid_body:
            raise UpstreamError("upstream connection was reset before the body ended")
        try:
            tail = decoder.flush() if decoder is not None else b""
        except DecodeError as exc:
            raise UpstreamError(str(exc)) from exc
        if tail:
            await self._emit(tail)
        rest = self.framer.flush() if self.framer is not None else b""
        if rest:
            await self._send(rest)  # an incomplete last frame, passed on as the upstream ended it

    async def _emit(self, piece: bytes) -> None:
        out = self._framed(piece)
        if out:
            await self._send(out)

    async def _send(self, data: bytes) -> None:
        """Body data from the upstream: written, then counted and shown to the writers."""
        await self._write(data)
        self._tell(data, self.policy.last_write)

    async def _write(self, data: bytes) -> None:
        self.policy.wrote(self._loop.time())
        self.bytes += len(data)
        try:
            await self._response.write(data)
        except ConnectionError as exc:
            raise ClientClosed(str(exc)) from exc

    async def _watch(self) -> None:
        """Wake at the policy's deadline and do what it says: a heartbeat or an idle failure."""
        policy, loop = self.policy, self._loop
        while (deadline := policy.deadline()) is not None:
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            tick = policy.tick(loop.time(), self.between_frames)
            if tick is Tick.HEARTBEAT:
                try:
                    await self._write(HEARTBEAT)
                except ClientClosed:
                    return
                self.heartbeats += 1
            elif tick is Tick.IDLE:
                self._fail(UpstreamIdle(f"upstream sent nothing for {policy.idle:g}s"))
                return


async def _yield() -> int:
    await asyncio.sleep(0)
    return 0


__all__ = ["ClientClosed", "Relay", "UpstreamError"]
