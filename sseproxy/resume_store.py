"""Where resumable streams keep their events: the store interface and the memory store.

A stream is its response head (status, reason, headers), the hash of the inbound token that started
it, its events numbered 1, 2, 3… (each already carrying its ``id:`` line), and, once it has ended,
how (``ok`` or ``error``). Readers ask for the events after their position and wait for more; each
reader keeps its own position, so a slow one never slows the producer or the others. Past
``max_bytes`` the oldest events are dropped, and a reader behind them is told the stream is gone.

Streams are found by the SHA-256 of their id, never by the id itself: a lookup then takes the same
time whatever the id presented, and keys (in memory or Redis) and logs show nothing that resumes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import functools
import hashlib
import hmac
import os
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

READ_MAX = 256  # events handed to a reader per read: bounds one write burst, not memory


class End(enum.Enum):
    OK = "ok"          # the upstream ended the stream: followers end it cleanly
    ERROR = "error"    # its last event is the proxy's error event: followers close truncated


@dataclass(frozen=True, slots=True)
class Head:
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Info:
    head: Head
    token_hash: str
    last: int              # the last event's number (0: none yet)
    end: End | None


@dataclass(frozen=True, slots=True)
class Batch:
    events: tuple[tuple[int, bytes], ...] = ()
    end: End | None = None     # set once the stream has ended and ``events`` reach its last one
    gone: bool = False         # the stream expired, or the position asked for was dropped


NOTHING_YET = Batch()       # what a read finds when nothing came (immutable: one for all)
GONE = Batch(gone=True)


class StoreUnavailable(ConnectionError):
    """The store cannot be reached (Redis down)."""


PUBLISH_EVERY = 1.0  # seconds between updates of the store-bytes gauge at streams' ends
ID_BYTES = 18    # 144 random bits a stream id: 24 characters of [A-Za-z0-9_-]
ID_POOL = 128    # ids drawn from the OS at once: one system call per 128 streams, not one per stream


class StreamIds:
    """Stream ids, from the OS's CSPRNG (as ``secrets``), drawn ``ID_POOL`` at a time. A child
    process never reuses its parent's pool: the pool belongs to the process that drew it."""

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0
        self._pid = 0

    def new(self) -> str:
        if self._at >= len(self._pool) or self._pid != os.getpid():
            self._pool, self._at, self._pid = os.urandom(ID_BYTES * ID_POOL), 0, os.getpid()
        raw = self._pool[self._at:self._at + ID_BYTES]
        self._at += ID_BYTES
        return base64.urlsafe_b64encode(raw).decode()


@functools.lru_cache(maxsize=4096)  # looked up on every append and read: hashed once per stream
def stream_key(sid: str) -> str:
    """What stores and logs name a stream by: safe to show, useless to resume with."""
    return hashlib.sha256(sid.encode()).hexdigest()[:32]


@functools.lru_cache(maxsize=256)  # once per stream and resume: a process sees few distinct tokens
def token_hash(token: str | None) -> str:
    return hashlib.sha256(b"sseproxy-resume\0" + (token or "").encode()).hexdigest()


def same_token(expected: str, presented: str) -> bool:
    return hmac.compare_digest(expected.encode(), presented.encode())


class Store(Protocol):
    async def create(self, sid: str, head: Head, token_hash: str, max_bytes: int, ttl: float) -> None: ...

    def appender(self, sid: str) -> Callable[[int, bytes], None]:
        """What the producer calls with each event ``n`` (numbers follow each other from 1), found
        once per stream, not per event. Never blocks the producer."""

    def end(self, sid: str, end: End) -> None: ...

    async def info(self, sid: str) -> Info | None: ...

    async def read(self, sid: str, after: int, wait: float) -> Batch:
        """Events after ``after``; waits up to ``wait`` seconds when there are none yet."""

    def read_now(self, sid: str, after: int) -> Batch | None:
        """``read`` without waiting, for a stream this process holds: no I/O, no coroutine (the
        follower of a local stream reads this way). ``None`` for a stream held elsewhere."""

    def local(self, sid: str) -> bool:
        """Whether this process produces (or holds) the stream."""

    def following(self, sid: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Held while a client here follows the stream. On a shared store, for a stream another
        replica produces, it tells that replica a client is attached (its detach clock)."""

    async def followed_elsewhere(self, sid: str) -> float | None:
        """Seconds since the last client following the stream on another replica left (negative
        while one follows it), or ``None`` when none did (or the store cannot say)."""

    async def close(self) -> None: ...


@dataclass(eq=False, slots=True)
class _Stream:
    """A stream's events, back to back in one buffer, with the offset where each ends: no object
    per event, so thousands of kept streams cost the garbage collector nothing to walk (a list of
    bytes is visited event by event at every full collection), and an event's bytes are freed once
    written. Events are numbered in order: ``ends[i]`` ends event ``base + i + 1``."""

    head: Head
    token_hash: str
    max_bytes: int
    ttl: float
    buf: bytearray = field(default_factory=bytearray)
    ends: array[int] = field(default_factory=lambda: array("Q"))
    base: int = 0              # events before ``ends[0]`` (dropped and compacted away)
    start: int = 0             # index in ``ends`` of the oldest kept
    size: int = 0              # bytes of the kept events
    end: End | None = None
    ended_at: float = 0.0
    forgotten: bool = False    # evicted or expired: its producer's appends are dropped
    waiters: list[asyncio.Future[None]] | None = None  # readers waiting for a change

    @property
    def last(self) -> int:
        """The last event's number (0: none yet)."""
        return self.base + len(self.ends)

    @property
    def first(self) -> int:
        """The oldest kept event's number (``last + 1`` when none is kept)."""
        return self.base + self.start + 1

    def events(self, index: int, count: int) -> tuple[tuple[int, bytes], ...]:
        """Up to ``count`` events from index ``index`` of ``ends``, numbered."""
        ends, buf = self.ends, self.buf
        stop = min(len(ends), index + count)
        at = ends[index - 1] if index else 0
        out = []
        for i in range(index, stop):
            out.append((self.base + i + 1, bytes(buf[at:ends[i]])))
            at = ends[i]
        return tuple(out)

    def drop_oldest(self) -> int:
        ends, start = self.ends, self.start
        size = ends[start] - (ends[start - 1] if start else 0)
        self.start = start = start + 1
        self.size -= size
        if start > 64 and start * 2 > len(ends):  # compact: amortised, the buffer never grows past twice
            cut = ends[start - 1]
            del self.buf[:cut]
            self.ends = array("Q", [e - cut for e in ends[start:]])
            self.base += start
            self.start = 0
        return size

    def wake(self) -> None:
        """Readers waiting for a change read again. Per append: free when none waits (a follower
        caught up with its producer is pushed events, it does not wait here)."""
        if self.waiters:
            waiters, self.waiters = self.waiters, None
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)


class MemoryStore:
    """Streams in this process, ``limit`` bytes in all: over it, the streams that ended longest ago
    go first, then the oldest events of the stream being written."""

    def __init__(self, limit: int):
        self.limit = limit
        self.bytes = 0
        self._streams: dict[str, _Stream] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()   # ended streams, the earliest end first

    def __len__(self) -> int:
        return len(self._streams)

    async def create(self, sid: str, head: Head, token_hash: str, max_bytes: int, ttl: float) -> None:
        self.open(sid, head, token_hash, max_bytes, ttl)

    def open(self, sid: str, head: Head, token_hash: str, max_bytes: int, ttl: float) -> None:
        self._expire()
        self._streams[stream_key(sid)] = _Stream(head, token_hash, max_bytes, ttl)

    def appender(self, sid: str) -> Callable[[int, bytes], None]:
        stream = self._streams.get(stream_key(sid))
        if stream is None:
            return _drop

        def append(n: int, data: bytes) -> None:
            if stream.forgotten:  # evicted while live (resume_memory full of live streams): nothing to keep
                return
            buf = stream.buf
            buf += data  # event n: numbers follow each other
            stream.ends.append(len(buf))
            stream.size += len(data)
            self.bytes += len(data)
            if stream.size > stream.max_bytes or self.bytes > self.limit:
                while stream.size > stream.max_bytes and stream.start < len(stream.ends) - 1:
                    self.bytes -= stream.drop_oldest()
                self._bound(stream)
            if stream.waiters:
                stream.wake()

        return append

    def end(self, sid: str, end: End) -> None:
        key = stream_key(sid)
        stream = self._streams.get(key)
        if stream is None or stream.end is not None:
            return
        stream.end, stream.ended_at = end, time.monotonic()
        self._ended[key] = None
        stream.wake()

    def _bound(self, writing: _Stream) -> None:
        while self.bytes > self.limit and self._ended:
            key, _ = self._ended.popitem(last=False)
            self._forget(key)
        while self.bytes > self.limit and writing.start < len(writing.ends) - 1:
            self.bytes -= writing.drop_oldest()

    def _forget(self, key: str) -> None:
        stream = self._streams.pop(key, None)
        self._ended.pop(key, None)
        if stream is not None:
            stream.forgotten = True
            self.bytes -= stream.size
            stream.wake()

    def _expire(self) -> None:
        now = time.monotonic()
        while self._ended:  # the earliest end first: stops at the first still kept, O(expired) a call
            key = next(iter(self._ended))
            stream = self._streams[key]
            if now < stream.ended_at + stream.ttl:
                break  # in order of ending; ttls differ per route, so this is lazy, never wrong: see _get
            self._forget(key)

    def _get(self, sid: str) -> _Stream | None:
        """The stream, unless it expired (others expire as streams open and resumes ask for info)."""
        key = stream_key(sid)
        stream = self._streams.get(key)
        if stream is not None and stream.end is not None and time.monotonic() >= stream.ended_at + stream.ttl:
            self._forget(key)
            return None
        return stream

    def local(self, sid: str) -> bool:
        return self._get(sid) is not None

    def following(self, sid: str) -> contextlib.AbstractAsyncContextManager[None]:
        return contextlib.nullcontext()  # one process: its producer counts its followers itself

    async def followed_elsewhere(self, sid: str) -> float | None:
        return None

    def bounds(self, sid: str) -> tuple[int, int] | None:
        """The first kept and the last event's numbers."""
        stream = self._streams.get(stream_key(sid))
        return (stream.first, stream.last) if stream is not None else None

    async def info(self, sid: str) -> Info | None:
        self._expire()
        stream = self._get(sid)
        if stream is None:
            return None
        return Info(stream.head, stream.token_hash, stream.last, stream.end)

    def read_now(self, sid: str, after: int) -> Batch:
        stream = self._get(sid)
        if stream is None:
            return GONE
        index = after - stream.base  # of the event after ``after``
        count = len(stream.ends)
        if index < stream.start or index > count:
            return GONE
        if index == count:
            return NOTHING_YET if stream.end is None else Batch(end=stream.end)
        events = stream.events(index, READ_MAX)
        return Batch(events, end=stream.end if index + len(events) == count else None)

    async def read(self, sid: str, after: int, wait: float) -> Batch:
        batch = self.read_now(sid, after)
        if batch is NOTHING_YET and wait > 0:
            stream = self._get(sid)
            assert stream is not None
            changed = asyncio.get_running_loop().create_future()
            if stream.waiters is None:
                stream.waiters = []
            stream.waiters.append(changed)
            try:
                async with asyncio.timeout(wait):  # not wait_for: it makes a task per wait
                    await changed
            except TimeoutError:
                return NOTHING_YET
            finally:
                if stream.waiters and changed in stream.waiters:  # timed out or cancelled: not kept
                    stream.waiters.remove(changed)
            return self.read_now(sid, after)
        return batch

    async def close(self) -> None:
        for key in list(self._streams):
            self._forget(key)
        self._ended.clear()


@dataclass(frozen=True)
class ResumeSettings:
    """A route's ``resume``, compiled."""

    store: str             # memory | redis://…: the key into ``Stores``
    ttl: float
    detach: float
    max_bytes: int


class Stores:
    """One store per distinct store URL, opened on first use, kept across reloads (a reload must
    not forget the streams in flight) and closed at exit. ``producers`` are the streams this
    process is producing, by key, so a resume here attaches to them (and resets their detach clock)."""

    def __init__(self, memory_limit: int):
        self.memory_limit = memory_limit
        self._stores: dict[str, Store] = {}
        self.producers: dict[str, Attachable] = {}
        self.ids = StreamIds()
        self._published_at = -PUBLISH_EVERY

    def publish(self, gauge: Settable, now: float) -> None:
        """``bytes`` into its gauge, at most once per ``PUBLISH_EVERY``: it sums every store."""
        if now >= self._published_at + PUBLISH_EVERY:
            self._published_at = now
            gauge.set(self.bytes)

    def get(self, url: str) -> Store:
        store = self._stores.get(url)
        if store is None:
            if url == "memory":
                store = MemoryStore(self.memory_limit)
            else:
                from .resume_redis import RedisStore  # redis-py is imported only where a route names it
                store = RedisStore(url, MemoryStore(self.memory_limit))
            self._stores[url] = store
        return store

    @property
    def bytes(self) -> int:
        """Bytes held in this process (the memory store, and Redis stores' local copies)."""
        total = 0
        for store in self._stores.values():
            memory = store if isinstance(store, MemoryStore) else getattr(store, "memory", None)
            total += memory.bytes if isinstance(memory, MemoryStore) else 0
        return total

    async def close(self) -> None:
        for store in self._stores.values():
            await store.close()
        self._stores.clear()


def _drop(n: int, data: bytes) -> None:
    """The appender of a stream the store no longer has."""


class Settable(Protocol):
    def set(self, value: float) -> None: ...


class Attachable(Protocol):
    def attach(self) -> None: ...

    def detach(self) -> None: ...
