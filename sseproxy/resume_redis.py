"""The Redis store: any replica serves a resume of any replica's stream.

Each stream is a Redis Stream of its events (entry id ``<n>-0``, and ``<last>-1`` marks the end with
its kind) and a metadata hash (response head, token hash, first kept and last event). Both expire
``ttl`` after the end (and an hour after the last write while live, so a replica that died leaves
nothing behind for long). Keys name the SHA-256 of the stream id, never the id.

A client following a stream on a replica that does not produce it keeps it attached there: while it
follows, it holds a mark in the stream's followers (a sorted set: follower -> until when, on Redis's
clock, refreshed every ``FOLLOW_REFRESH`` and set to "now" when it leaves). The producing replica
reads the latest mark before its detach clock cancels the upstream: a mark in the future is a client
attached, one in the past is when the last one left.

The producing replica keeps a memory copy of its own streams: its followers read that, never poll
Redis, and the producer never waits for Redis. One writer task per store sends what the producers
append, in batches, in a MULTI/EXEC each. When Redis cannot be reached at a stream's start, the store
says so (``StoreUnavailable``) and the stream is relayed without ids; when it goes away mid-stream,
the stream goes on (followed from the memory copy), the failure is logged once, and its keys are
deleted once Redis is back, so that no replica ever serves it with a gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .resume_store import READ_MAX, Batch, End, Head, Info, MemoryStore, StoreUnavailable, stream_key

log = logging.getLogger("sseproxy")
LIVE_EXPIRY = 3600       # seconds a live stream's keys outlive its last write (a dead replica's streams)
MAX_BLOCK = 4.0          # longest XREAD BLOCK, under the socket timeout
SOCKET_TIMEOUT = 10.0
WRITE_BATCH = 512        # operations per MULTI/EXEC: bounds one transaction's size
FAILURES = (RedisError, OSError)
T = TypeVar("T")
FOLLOW_LEASE = 10.0      # seconds a follower's mark outlives its last refresh (a replica that died mid-follow)
FOLLOW_REFRESH = 3.0     # seconds between a follower's refreshes of its mark

_NOW_MS = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "
# KEYS[1] followers; ARGV: follower id, lease ms, key expiry ms. Marks of followers gone are dropped:
# one is attached now, so when the last one left no longer matters (the set stays small).
_ATTACH = _NOW_MS + """redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])"""
_LEAVE = _NOW_MS + "redis.call('ZADD', KEYS[1], 'XX', now, ARGV[1])"  # its mark says when it left
# Milliseconds since the latest mark (negative: a follower is attached), or nil when there is none.
_SINCE = _NOW_MS + """local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if #last == 0 then return false end
return now - tonumber(last[2])"""


class RedisStore:
    def __init__(self, url: str, memory: MemoryStore):
        self.url = url
        self.memory = memory
        self.redis = aioredis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=SOCKET_TIMEOUT)
        self._ops: list[tuple[str, str, Any]] = []       # (kind, sid, arg) not yet written: bounded by the
        self._wake = asyncio.Event()                      # producers' rate for as long as one write takes
        self._writer: asyncio.Task[None] | None = None
        self._ttls: dict[str, float] = {}                 # live streams' ttl, by sid
        self._last: dict[str, int] = {}                   # live streams' last event, by sid
        self._broken: set[str] = set()                    # streams whose Redis copy has a gap: deleted
        self._leaving: set[asyncio.Task[None]] = set()    # followers' last writes, awaited at close
        self._attach = self.redis.register_script(_ATTACH)
        self._leave = self.redis.register_script(_LEAVE)
        self._since = self.redis.register_script(_SINCE)
        self.down = False

    @staticmethod
    def _keys(sid: str) -> tuple[str, str]:
        key = f"sseproxy:resume:{stream_key(sid)}"
        return f"{key}:meta", f"{key}:events"

    @staticmethod
    def _followers(sid: str) -> str:
        return f"sseproxy:resume:{stream_key(sid)}:followers"

    def _failed(self, exc: BaseException) -> None:
        if not self.down:
            self.down = True
            log.warning("resume store %s cannot be reached (%s): streams are relayed without ids, resumes "
                        "get 503 until it is back", _safe(self.url), type(exc).__name__)

    def _recovered(self) -> None:
        if self.down:
            self.down = False
            log.info("resume store %s is reachable again", _safe(self.url))

    # -- the producer's side --------------------------------------------------------------------
    async def create(self, sid: str, head: Head, token_hash: str, max_bytes: int, ttl: float) -> None:
        meta, _ = self._keys(sid)
        fields: Any = {  # redis-py types a mapping invariantly: any dict of these is refused
            "head": json.dumps([head.status, head.reason, head.headers]), "token": token_hash, "first": 1, "last": 0}
        try:
            await _apart(self._create(meta, fields, int(ttl + LIVE_EXPIRY)))
        except FAILURES as exc:
            self._failed(exc)
            raise StoreUnavailable(str(exc)) from None
        self._recovered()
        self.memory.open(sid, head, token_hash, max_bytes, ttl)
        self._ttls[sid] = ttl
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())

    async def _create(self, meta: str, fields: Any, expiry: int) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(meta, mapping=fields)
            pipe.expire(meta, expiry)
            await pipe.execute()

    def appender(self, sid: str) -> Callable[[int, bytes], None]:
        local = self.memory.appender(sid)

        def append(n: int, data: bytes) -> None:
            local(n, data)
            self._last[sid] = n
            self._ops.append(("add", sid, (n, data)))
            self._wake.set()

        return append

    def end(self, sid: str, end: End) -> None:
        self.memory.end(sid, end)
        self._ops.append(("end", sid, end))
        self._wake.set()

    async def _write(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._ops:
                ops, self._ops = self._ops[:WRITE_BATCH], self._ops[WRITE_BATCH:]
                await self._send(ops)

    async def _send(self, ops: list[tuple[str, str, Any]]) -> None:
        touched: set[str] = set()
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                for kind, sid, arg in ops:
                    meta, events = self._keys(sid)
                    if sid in self._broken:
                        pipe.delete(meta, events)
                        continue
                    if kind == "add":
                        n, data = arg
                        pipe.xadd(events, {"d": data}, id=f"{n}-0")
                        touched.add(sid)
                    else:
                        pipe.xadd(events, {"end": arg.value}, id=f"{self._last.get(sid, 0)}-1")
                        pipe.hset(meta, "end", arg.value)
                        touched.add(sid)
                for sid in touched:
                    meta, events = self._keys(sid)
                    bounds = self.memory.bounds(sid)
                    if bounds is not None:
                        pipe.xtrim(events, minid=f"{bounds[0]}-0")
                        pipe.hset(meta, mapping={"first": bounds[0], "last": bounds[1]})
                    ttl = self._ttls.get(sid, 0.0)
                    ended = any(k == "end" and s == sid for k, s, _ in ops)
                    expiry = int(ttl) if ended else int(ttl + LIVE_EXPIRY)
                    pipe.expire(meta, max(1, expiry))
                    pipe.expire(events, max(1, expiry))
                await pipe.execute()
        except FAILURES as exc:
            self._failed(exc)
            self._broken.update(sid for _, sid, _ in ops)
            return
        self._recovered()
        for kind, sid, _ in ops:
            if kind == "end" or sid in self._broken:
                self._ttls.pop(sid, None)
                self._last.pop(sid, None)
        self._broken.difference_update(sid for _, sid, _ in ops)

    # -- readers --------------------------------------------------------------------------------
    def local(self, sid: str) -> bool:
        return self.memory.local(sid)

    async def info(self, sid: str) -> Info | None:
        if self.memory.local(sid):
            return await self.memory.info(sid)
        meta, _ = self._keys(sid)
        try:
            found: Any = await _apart(self.redis.hmget(meta, ["head", "token", "last", "end"]))
            head, token, last, end = found
        except FAILURES as exc:
            self._failed(exc)
            raise StoreUnavailable(str(exc)) from None
        if head is None or token is None:
            return None
        status, reason, headers = json.loads(head)
        return Info(Head(status, reason, tuple((k, v) for k, v in headers)), token.decode(), int(last or 0),
                    End(end.decode()) if end else None)

    def read_now(self, sid: str, after: int) -> Batch | None:
        return self.memory.read_now(sid, after) if self.memory.local(sid) else None

    async def read(self, sid: str, after: int, wait: float) -> Batch:
        if self.memory.local(sid):
            return await self.memory.read(sid, after, wait)
        try:
            return await _apart(self._read(sid, after, wait))
        except FAILURES as exc:
            self._failed(exc)
            raise StoreUnavailable(str(exc)) from None

    async def _read(self, sid: str, after: int, wait: float) -> Batch:
        meta, events = self._keys(sid)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hmget(meta, ["first", "last"])
            pipe.xrange(events, min=f"({after}-0", count=READ_MAX)
            (first, last), entries = await pipe.execute()
        if first is None or after < int(first) - 1 or after > int(last):
            return Batch(gone=True)
        if not entries and wait > 0:
            found: Any = await self.redis.xread({events: f"{after}-0"}, count=READ_MAX,
                                           block=max(1, int(min(wait, MAX_BLOCK) * 1000)))
            entries = found[0][1] if found else []  # RESP2: [[key, entries]]
        return _batch(entries, after)


    # -- followers on other replicas ----------------------------------------------------------
    @contextlib.asynccontextmanager
    async def following(self, sid: str) -> AsyncIterator[None]:
        if self.memory.local(sid):  # produced here: its producer counts this follower itself
            yield
            return
        key, follower = self._followers(sid), secrets.token_hex(8)
        args: list[str | int] = [follower, int(FOLLOW_LEASE * 1000), int(LIVE_EXPIRY * 1000)]
        with contextlib.suppress(*FAILURES):  # Redis down: the reads fail and say so
            await _apart(self._attach(keys=[key], args=args))
        keeper = asyncio.create_task(self._keep(key, args))
        try:
            yield
        finally:
            keeper.cancel()
            leave = asyncio.create_task(self._left(key, follower))  # not awaited: the handler may be cancelled
            self._leaving.add(leave)
            leave.add_done_callback(self._leaving.discard)

    async def _keep(self, key: str, args: list[str | int]) -> None:
        while True:
            await asyncio.sleep(FOLLOW_REFRESH)
            with contextlib.suppress(*FAILURES):
                await self._attach(keys=[key], args=args)

    async def _left(self, key: str, follower: str) -> None:
        with contextlib.suppress(*FAILURES):
            await self._leave(keys=[key], args=[follower])

    async def followed_elsewhere(self, sid: str) -> float | None:
        try:
            since: Any = await self._since(keys=[self._followers(sid)])
        except FAILURES as exc:
            self._failed(exc)
            return None
        return None if since is None else int(since) / 1000

    async def close(self) -> None:
        if self._leaving:
            await asyncio.wait(self._leaving, timeout=2.0)
        if self._writer is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained(), 2.0)
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        await self.memory.close()
        with contextlib.suppress(*FAILURES):
            await self.redis.aclose()

    async def _drained(self) -> None:
        while self._ops:
            await asyncio.sleep(0.01)


async def _apart(command: Awaitable[T]) -> T:
    """A command of the request path, in a task of its own: the handler's cancellation (its client
    hung up) ends the handler at once. redis-py (8.1 too) can swallow a cancellation that lands while
    a command is under way, and the command then returns as if nothing happened (redis-py issues
    2028, 2551): a follower on another replica would go on reading for nobody, and keep the stream
    attached on its producing replica. The command itself is cancelled too; if that is swallowed,
    it ends by itself (an XREAD within ``MAX_BLOCK``) and its answer is dropped."""
    task = asyncio.ensure_future(command)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.cancel()
        task.add_done_callback(_dropped)
        raise


def _dropped(task: asyncio.Future[Any]) -> None:
    """The answer (or failure) of a command whose caller was cancelled: nobody needs it."""
    if not task.cancelled():
        task.exception()


def _batch(entries: list[tuple[bytes, dict[bytes, bytes]]], after: int) -> Batch:
    out: list[tuple[int, bytes]] = []
    for raw_id, fields in entries:
        n_text, _, seq = raw_id.decode().partition("-")
        if seq == "1":
            return Batch(tuple(out), end=End(fields[b"end"].decode()))
        n = int(n_text)
        if n != (out[-1][0] if out else after) + 1:
            return Batch(gone=True)  # trimmed since the position was checked
        out.append((n, fields[b"d"]))
    return Batch(tuple(out))


def _safe(url: str) -> str:
    """The URL without a password, for logs."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}"
