"""The relay loop: read what arrived, decode, frame, write each whole frame at once.

Each ``await write()`` goes out immediately and waits only when the client's socket buffer is
full, which is where backpressure comes from: the upstream is not read while the client lags.
Heartbeats are written by a side task, only while the client sits between whole events.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from .decoding import DecodeError, Decoder
from .errors import ShuttingDown, UpstreamError
from .framing import Framer
from .upstream import mid_stream_error

HEARTBEAT = b": keep-alive\n\n"


class ClientClosed(ConnectionError):
    """The client went away while the proxy was writing to it."""


@dataclass
class RelayStats:
    bytes: int = 0
    events: int = 0
    heartbeats: int = 0
    first_event_at: float | None = None


def error_frame(error_type: str, message: str) -> bytes:
    data = json.dumps({"error": {"type": error_type, "message": message}})
    return f"event: error\ndata: {data}\n\n".encode()


class Relay:
    """Moves one upstream body to one client response; raises ``UpstreamError`` or ``ClientClosed``."""

    def __init__(self, upstream: aiohttp.ClientResponse, response: web.StreamResponse, *,
                 framer: Framer | None, decoder: Decoder | None, heartbeat: float, idle: float,
                 on_frames: Callable[[bytes], None] | None = None):
        self._upstream = upstream
        self._response = response
        self.framer = framer
        self._decoder = decoder
        self._heartbeat = heartbeat
        self._idle = idle
        self._on_frames = on_frames
        self._loop = asyncio.get_running_loop()
        self._last_write = self._loop.time()
        self.stats = RelayStats()
        self.stopping = False

    def stop(self) -> None:
        """End this stream for shutdown: the pending read fails and ``run`` raises ``ShuttingDown``."""
        self.stopping = True
        self._upstream.close()

    async def run(self) -> None:
        beats = asyncio.create_task(self._beat()) if self._heartbeat > 0 else None
        try:
            await self._pump()
        finally:
            if beats is not None:
                beats.cancel()

    @property
    def between_frames(self) -> bool:
        return self.framer is None or not self.framer.mid_frame

    async def _pump(self) -> None:
        read = self._upstream.content.readany
        decoder = self._decoder
        while True:
            try:
                chunk = await read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                if self.stopping:
                    raise ShuttingDown("sseproxy is shutting down") from exc
                raise mid_stream_error(exc, self._idle) from exc
            if not chunk:
                break
            if decoder is None:
                await self._emit(chunk)
                continue
            try:
                for piece in decoder.decode(chunk):
                    await self._emit(piece)
            except DecodeError as exc:
                raise UpstreamError(str(exc)) from exc
        try:
            tail = decoder.flush() if decoder is not None else b""
        except DecodeError as exc:
            raise UpstreamError(str(exc)) from exc
        if tail:
            await self._emit(tail)
        rest = self.framer.flush() if self.framer is not None else b""
        if rest:
            await self.write(rest)  # an incomplete last frame, passed on as the upstream ended it

    async def _emit(self, piece: bytes) -> None:
        framer = self.framer
        if framer is None:
            await self.write(piece)
            return
        out = framer.feed(piece)
        if out:
            if self.stats.first_event_at is None and framer.frames:
                self.stats.first_event_at = self._loop.time()
            self.stats.events = framer.frames
            await self.write(out)
            if self._on_frames is not None:
                self._on_frames(out)

    async def write(self, data: bytes) -> None:
        self._last_write = self._loop.time()
        self.stats.bytes += len(data)
        try:
            await self._response.write(data)
        except ConnectionError as exc:
            raise ClientClosed(str(exc)) from exc

    async def _beat(self) -> None:
        """Write ``: keep-alive`` after ``heartbeat`` of silence toward the client."""
        while True:
            due = self._last_write + self._heartbeat - self._loop.time()
            if due > 0:
                await asyncio.sleep(due)
                continue
            if not self.between_frames:
                await asyncio.sleep(self._heartbeat)
                continue
            try:
                await self.write(HEARTBEAT)
            except ClientClosed:
                return
            self.stats.heartbeats += 1


class Streams:
    """The streams being relayed now, so that shutdown can wait for them and then end the rest."""

    def __init__(self) -> None:
        self._relays: set[Relay] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def __len__(self) -> int:
        return len(self._relays)

    def add(self, relay: Relay) -> None:
        self._relays.add(relay)
        self._idle.clear()

    def discard(self, relay: Relay) -> None:
        self._relays.discard(relay)
        if not self._relays:
            self._idle.set()

    async def drain(self, grace: float) -> int:
        """Wait up to ``grace`` for streams to end; stop the rest. Returns how many were stopped."""
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
            return 0
        except TimeoutError:
            relays = list(self._relays)
            for relay in relays:
                relay.stop()
            await asyncio.wait_for(self._idle.wait(), 5.0)
            return len(relays)
