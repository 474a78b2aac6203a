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
import enum
import functools
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol

READ_MAX = 256  # events handed to a reader per read: bounds one write burst, not memory


class End(enum.Enum):
    OK = "ok"          # the upstream ended the stream: followers end it cleanly
    ERROR = "error"    # its last event is the proxy's error event: followers close truncated


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class Batch:
    events: tuple[tuple[int, bytes], ...] = ()
    end: End | None = None     # set once the stream has ended and ``events`` reach its last one
    gone: bool = False         # the stream expired, or the position asked for was dropped


class StoreUnavailable(ConnectionError):
    """The store cannot be reached (Redis down)."""


def new_stream_id() -> str:
    return secrets.token_urlsafe(18)  # 144 random bits, [A-Za-z0-9_-]


@functools.lru_cache(maxsize=4096)  # looked up on every append and read: hashed once per stream
def stream_key(sid: str) -> str:
    """What stores and logs name a stream by: safe to show, useless to resume with."""
    return hashlib.sha256(sid.encode()).hexdigest()[:32]


def token_hash(token: str | None) -> str:
    return hashlib.sha256(b"sseproxy-resume\0" + (token or "").encode()).hexdigest()


def same_token(expected: str, presented: str) -> bool:
    return hmac.compare_digest(expected.encode(), presented.encode())


class Store(Protocol):
    async def create(self, sid: str, head: Head, token_hash: str, max_bytes: int, ttl: float) -> None: ...

    def append(self, sid: str, n: int, data: bytes) -> None:
        """Event ``n`` (numbers follow each other from 1). Never blocks the producer."""

    def end(self, sid: str, end: End) -> None: ...

    async def info(self, sid: str) -> Info | None: ...

    async def read(self, sid: str, after: int, wait: float) -> Batch:
        """Events after ``after``; waits up to ``wait`` seconds when there are none yet."""

    def local(self, sid: str) -> bool:
        """Whether this process produces (or holds) the stream."""

    async def close(self) -> None: ...


@dataclass(eq=False)
class _Stream:
    head: Head
    token_hash: str
    max_bytes: int
    ttl: float
    events: list[tuple[int, bytes]] = field(default_factory=list)
    start: int = 0             # index in ``events`` of the oldest kept (dropped ones are compacted away)
    size: int = 0              # bytes of the kept events
    last: int = 0
    end: End | None = None
    ended_at: float = 0.0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def first(self) -> int:
        """The oldest kept event's number (``last + 1`` when none is kept)."""
        return self.events[self.start][0] if self.start < len(self.events) else self.last + 1

    def drop_oldest(self) -> int:
        _, data = self.events[self.start]
        self.start += 1
        self.size -= len(data)
        if self.start > 64 and self.start * 2 > len(self.events):
            del self.events[:self.start]
            self.start = 0
        return len(data)

    def wake(self) -> None:
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()


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

    def append(self, sid: str, n: int, data: bytes) -> None:
        stream = self._streams.get(stream_key(sid))
        if stream is None:  # evicted while live (resume_memory full of live streams): nothing to keep
            return
        stream.events.append((n, data))
        stream.last = n
        stream.size += len(data)
        self.bytes += len(data)
        while stream.size > stream.max_bytes and stream.start < len(stream.events) - 1:
            self.bytes -= stream.drop_oldest()
        self._bound(stream)
        stream.wake()

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
        while self.bytes > self.limit and writing.start < len(writing.events) - 1:
            self.bytes -= writing.drop_oldest()

    def _forget(self, key: str) -> None:
        stream = self._streams.pop(key, None)
        self._ended.pop(key, None)
        if stream is not None:
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
        self._expire()
        key = stream_key(sid)
        stream = self._streams.get(key)
        if stream is not None and stream.end is not None and time.monotonic() >= stream.ended_at + stream.ttl:
            self._forget(key)
            return None
        return stream

    def local(self, sid: str) -> bool:
        return self._get(sid) is not None

    def bounds(self, sid: str) -> tuple[int, int] | None:
        """The first kept and the last event's numbers."""
        stream = self._streams.get(stream_key(sid))
        return (stream.first, stream.last) if stream is not None else None

    async def info(self, sid: str) -> Info | None:
        stream = self._get(sid)
        if stream is None:
            return None
        return Info(stream.head, stream.token_hash, stream.last, stream.end)

    async def read(self, sid: str, after: int, wait: float) -> Batch:
        stream = self._get(sid)
        if stream is None or after < stream.first - 1 or after > stream.last:
            return Batch(gone=True)
        if after == stream.last and stream.end is None:
            changed = stream.changed
            try:
                async with asyncio.timeout(wait):  # not wait_for: it makes a task, once per event here
                    await changed.wait()
            except TimeoutError:
                return Batch()
            return await self.read(sid, after, 0)
        index = stream.start + (after - stream.first + 1)
        events = tuple(stream.events[index:index + READ_MAX])
        reached_end = not events or events[-1][0] == stream.last
        return Batch(events, end=stream.end if reached_end else None)

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


class Attachable(Protocol):
    def attach(self) -> None: ...

    def detach(self) -> None: ...
