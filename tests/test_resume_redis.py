"""Resumable streams on Redis: two proxies (two replicas) sharing one real redis-server. A stream
started on A is resumed from B; a client following on B keeps A's upstream attached; with Redis
stopped, new streams still relay (without ids) and a resume gets 503."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from helpers import WAIT, raw_request, running_app, running_proxy
from procs import read_lines_until, sseproxy_process
from redis_server import RedisServer, redis_server
from test_resume import Upstream, event, next_event, start, start_with_one_event, stored

from sseproxy.resume_redis import RedisStore
from sseproxy.resume_store import Head, MemoryStore
from sseproxy.runtime import Runtime


@contextlib.asynccontextmanager
async def two_replicas(directory: Path) -> AsyncIterator[tuple[RedisServer, Upstream, tuple[str, Runtime],
                                                               tuple[str, Runtime]]]:
    """A redis-server (files in ``directory``), the gated upstream, and two proxies (replicas A and B)
    with one resumable route to it on that Redis; yields Redis, the upstream and each proxy's base
    URL and runtime."""
    upstream = Upstream()
    async with redis_server(directory) as redis, running_app(upstream.app()) as url:
        route = {"upstream": url, "resume": {"store": redis.url}}
        async with running_proxy({"heartbeat": 30, "routes": [route]}) as a, \
                running_proxy({"heartbeat": 30, "routes": [route]}) as b:
            yield redis, upstream, a, b


async def test_a_stream_started_on_one_replica_is_resumed_on_another(tmp_path: Path) -> None:
    async with two_replicas(tmp_path) as (redis, upstream, (a, runtime_a), (b, runtime_b)):
        first, sid = await start(upstream, a)
        for i in (1, 2, 3):
            upstream.gate.release(event(i))
            assert await next_event(first) == (sid, i, f"token {i}")
        first.close()  # hangs up on A
        upstream.gate.release(event(4))
        await stored(runtime_a, sid, 4, redis.url)

        again = await raw_request(b, "GET", "/", {"Last-Event-ID": f"{sid}.3"})
        assert again.status == 200
        assert again.headers["sseproxy-stream-id"] == sid
        assert again.headers["x-upstream"] == "gated"
        assert await next_event(again) == (sid, 4, "token 4")
        upstream.gate.release(event(5))
        assert await next_event(again) == (sid, 5, "token 5")  # live, through Redis
        upstream.gate.release(None)
        assert await again.next_chunk() is None  # the normal end, seen on B
        assert len(upstream.requests) == 1

        done = await raw_request(b, "GET", "/", {"Last-Event-ID": f"{sid}.5"})
        assert done.status == 204
        assert not runtime_b.resume_stores.get(redis.url).local(sid)  # B served it from Redis


async def test_redis_down_streams_relay_without_ids_and_resumes_get_503(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    async with two_replicas(tmp_path) as (redis, upstream, (a, runtime_a), (b, _)):
        first, sid = await start_with_one_event(upstream, a)
        await redis.stop()
        upstream.gate.release(event(2))  # Redis went away mid-stream: the stream goes on
        assert await next_event(first) == (sid, 2, "token 2")
        upstream.gate.release(None)
        assert await first.next_chunk() is None

        plain = await raw_request(a, "GET", "/", {"Accept": "text/event-stream"})
        assert plain.status == 200
        assert "sseproxy-stream-id" not in plain.headers
        upstream.gate.release(event(7))
        assert await plain.next_chunk() == event(7)  # as the upstream sent it, with its own id
        resume = await raw_request(b, "GET", "/", {"Last-Event-ID": f"{sid}.1"})
        assert resume.status == 503
        assert json.loads(await resume.body())["error"]["type"] == "resume_unavailable"
        assert "sseproxy_resume_store_errors_total 1.0" in runtime_a.metrics.render().decode()
        upstream.gate.release(None)
        assert await plain.next_chunk() is None
    warnings = [r for r in caplog.records if "cannot be reached" in r.getMessage()]
    assert len(warnings) == 2  # logged once per replica, not per stream or per event


async def test_a_follower_on_another_replica_keeps_the_stream_attached_until_it_leaves(tmp_path: Path) -> None:
    """Two sseproxy processes, one Redis, ``detach: 1s``. A client follows on B a stream produced on
    A, and A's client hangs up: A's detach clock runs out, A finds B's follower in Redis and keeps
    the upstream (its log says so); the stream goes on to B. Once B's client leaves too, A cancels
    the upstream one ``detach`` later."""
    upstream = Upstream()
    async with redis_server(tmp_path) as redis, running_app(upstream.app()) as url:
        config = tmp_path / "replica.yaml"  # JSON is YAML
        config.write_text(json.dumps({"listen": "127.0.0.1:0", "heartbeat": 30, "routes": [
            {"upstream": url, "resume": {"store": redis.url, "detach": "1s"}}]}))
        async with sseproxy_process("serve", "--config", str(config)) as (proc_a, a), \
                sseproxy_process("serve", "--config", str(config)) as (_, b):
            assert proc_a.stderr is not None
            first, sid = await start(upstream, a)
            for i in (1, 2):
                upstream.gate.release(event(i))
                assert await next_event(first) == (sid, i, f"token {i}")
            on_b = await raw_request(b, "GET", "/", {"Last-Event-ID": f"{sid}.2"})
            assert on_b.status == 200  # B has marked its follower in Redis before its response head
            first.close()  # A has no client now: its detach clock runs

            await read_lines_until(proc_a.stderr, "follows it on another replica: kept")  # it ran out, A asked Redis
            assert not upstream.closed.is_set()
            upstream.gate.release(event(3))
            assert await next_event(on_b) == (sid, 3, "token 3")  # the stream went on, to B

            on_b.close()  # the last client anywhere leaves: A cancels the upstream one detach later
            await asyncio.wait_for(upstream.closed.wait(), WAIT)
            late = await raw_request(b, "GET", "/", {"Last-Event-ID": f"{sid}.3"})
            assert late.status == 200
            error = await late.next_event()
            assert error.startswith(b"event: error\n") and b'"detached"' in error
            assert len(upstream.requests) == 1


async def test_a_remote_read_ends_when_its_task_is_cancelled_wherever_the_cancel_lands(tmp_path: Path) -> None:
    """redis-py can swallow a cancellation that lands mid-command; a follower whose client hung up
    must end anyway (else it follows for nobody and keeps the stream attached on its producer). The
    cancel lands at a different point of the read loop each time; every time, the task ends
    cancelled (without the store's care, about half go on reading)."""
    async with redis_server(tmp_path) as redis:
        producing = RedisStore(redis.url, MemoryStore(1 << 20))
        following = RedisStore(redis.url, MemoryStore(1 << 20))
        sid = "R" * 24
        await producing.create(sid, Head(200, "OK", ()), "", 1 << 20, 60)
        append = producing.appender(sid)

        async def follow(after: int, read_one: asyncio.Event) -> None:
            while True:
                batch = await following.read(sid, after, 30)
                if batch.events:
                    after = batch.events[-1][0]
                    read_one.set()

        try:
            for n in range(1, 41):
                read_one = asyncio.Event()
                task = asyncio.create_task(follow(n - 1, read_one))
                append(n, b"data: x\n\n")
                await asyncio.wait_for(read_one.wait(), WAIT)  # the next read has started, or is about to
                for _ in range(n % 8):
                    await asyncio.sleep(0)
                task.cancel()
                await asyncio.wait({task}, timeout=WAIT)  # bounded, and never cancels it again
                assert task.cancelled(), f"read {n} went on after its cancellation"
        finally:
            await following.close()
            await producing.close()


async def test_the_follow_mark_of_a_replica_that_died_runs_out_with_its_lease(tmp_path: Path) -> None:
    """A replica that dies while following never takes its mark back. The mark holds until when it was
    last kept (a lease a live follower renews every FOLLOW_REFRESH), so the producer's replica counts
    the stream as followed until the lease runs out and not after; then its detach clock starts.
    Here a mark is set as a follower sets it, with a 0.3 s lease, and never renewed or taken back."""
    async with redis_server(tmp_path) as redis:
        store = RedisStore(redis.url, MemoryStore(1 << 20))
        sid = "D" * 24
        try:
            assert await store.followed_elsewhere(sid) is None  # nobody has followed it
            await store._attach(keys=[store._followers(sid)], args=["died", 300, 60_000])
            since = await store.followed_elsewhere(sid)
            assert since is not None and since < 0  # followed: the lease runs
            loop = asyncio.get_running_loop()
            deadline = loop.time() + WAIT
            while since is not None and since < 0 and loop.time() < deadline:  # bounded in time
                await asyncio.sleep(0.05)
                since = await store.followed_elsewhere(sid)
            assert since is not None and 0 <= since < WAIT  # ran out: the time since, not "never followed"
            assert loop.time() < deadline
        finally:
            await store.close()
