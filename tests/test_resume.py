"""Resumable streams with the memory store, through a running proxy and a gated upstream: ids on
every event, a hang-up that detaches, a reconnect with Last-Event-ID that gets exactly what it
missed and then the live events, several followers, 204 / 410, and the detach clock running out."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from helpers import WAIT, Gate, RawResponse, Truncated, raw_request, running_app, running_proxy

from sseproxy.resume import parse_last_event_id
from sseproxy.resume_producer import EventFramer, plain_event, split_frames, with_id
from sseproxy.resume_store import End, Head, MemoryStore
from sseproxy.runtime import Runtime

ID_LINE = re.compile(r"\nid: ([A-Za-z0-9_-]+)\.(\d+)\n\n$")


@dataclass
class Upstream:
    gate: Gate = field(default_factory=Gate)
    requests: list[dict[str, str]] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)  # the proxy closed the connection mid-stream

    def app(self) -> web.Application:
        async def stream(request: web.Request) -> web.StreamResponse:
            self.requests.append(dict(request.headers))
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Upstream": "gated"})
            await response.prepare(request)
            try:
                while (data := await self.gate.next()) is not None:
                    await response.write(data)
            except (asyncio.CancelledError, ConnectionError):
                self.closed.set()
                raise
            await response.write_eof()
            return response

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", stream)
        return app


def event(i: int) -> bytes:
    return f"id: up-{i}\ndata: token {i}\n\n".encode()


@contextlib.asynccontextmanager
async def resumable(resume: Any = True, **config: Any) -> AsyncIterator[tuple[Upstream, str, Runtime]]:
    upstream = Upstream()
    async with running_app(upstream.app()) as url, running_proxy(
            {"heartbeat": 30, **config, "routes": [{"upstream": url, "resume": resume}]}) as (proxy, runtime):
        yield upstream, proxy, runtime


def parse(chunk: bytes) -> tuple[str, int, str]:
    """(stream id, n, data) of one event as the proxy wrote it."""
    text = chunk.decode()
    found = ID_LINE.search(text)
    assert found is not None, text
    data = "\n".join(line[6:] for line in text.split("\n") if line.startswith("data: "))
    return found.group(1), int(found.group(2)), data


async def next_event(response: RawResponse) -> tuple[str, int, str]:
    return parse(await response.next_event())


async def start(upstream: Upstream, proxy: str, headers: dict[str, str] | None = None) -> tuple[RawResponse, str]:
    response = await raw_request(proxy, "GET", "/", {"Accept": "text/event-stream", **(headers or {})})
    assert response.status == 200
    sid = response.headers["sseproxy-stream-id"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{22,}", sid)
    return response, sid


async def start_with_one_event(upstream: Upstream, proxy: str, headers: dict[str, str] | None = None
                               ) -> tuple[RawResponse, str]:
    """A resumable stream started (as ``start``) whose first event the client has had, numbered 1."""
    response, sid = await start(upstream, proxy, headers)
    upstream.gate.release(event(1))
    assert await next_event(response) == (sid, 1, "token 1")
    return response, sid


async def stored(runtime: Runtime, sid: str, n: int, store_url: str = "memory") -> None:
    """Wait (bounded) until event ``n`` is in the store: a gate, not a sleep."""
    store = runtime.resume_stores.get(store_url)
    for _ in range(n + 1):
        info = await store.info(sid)
        assert info is not None
        if info.last >= n:
            return
        await store.read(sid, info.last, WAIT)
    raise AssertionError(f"event {n} never stored")


async def test_ids_hangup_and_resume_get_exactly_the_missed_events_then_live_ones() -> None:
    async with resumable() as (upstream, proxy, runtime):
        first, sid = await start(upstream, proxy)
        assert first.headers["x-upstream"] == "gated"
        for i in (1, 2):
            upstream.gate.release(event(i))
            assert await next_event(first) == (sid, i, f"token {i}")  # the upstream's id replaced by ours
        assert b"up-1" not in first.chunks[0] and first.chunks[0].count(b"id:") == 1
        first.close()  # the client hangs up mid-stream
        for i in (3, 4):
            upstream.gate.release(event(i))  # the upstream goes on, into the store
        await stored(runtime, sid, 4)
        assert not upstream.closed.is_set()

        again = await raw_request(proxy, "GET", "/", {"Last-Event-ID": f"{sid}.2"})
        assert again.status == 200
        assert again.headers["sseproxy-stream-id"] == sid
        assert again.headers["x-upstream"] == "gated"  # the original response's head
        assert [await next_event(again) for _ in range(2)] == [(sid, 3, "token 3"), (sid, 4, "token 4")]
        upstream.gate.release(event(5))
        assert await next_event(again) == (sid, 5, "token 5")
        upstream.gate.release(None)
        assert await again.next_chunk() is None  # the normal end
        assert len(upstream.requests) == 1  # the resume never reached the upstream
        assert "last-event-id" not in {k.lower() for k in upstream.requests[0]}

        done = await raw_request(proxy, "GET", "/", {"Last-Event-ID": f"{sid}.5"})
        assert done.status == 204  # everything was delivered: EventSource stops reconnecting
        metrics = runtime.metrics.render().decode()
        assert 'sseproxy_resumes_total{result="ok",route="/"} 1.0' in metrics
        assert 'sseproxy_resume_replayed_events_total{route="/"} 2.0' in metrics


async def test_two_followers_at_once_each_get_every_event_once() -> None:
    async with resumable() as (upstream, proxy, _):
        first, sid = await start_with_one_event(upstream, proxy)
        second = await raw_request(proxy, "GET", "/", {"Last-Event-ID": f"{sid}.0"})
        assert (await next_event(second))[1] == 1
        for i in (2, 3):
            upstream.gate.release(event(i))
            assert await next_event(first) == (sid, i, f"token {i}")
            assert await next_event(second) == (sid, i, f"token {i}")
        upstream.gate.release(None)
        assert await first.next_chunk() is None
        assert await second.next_chunk() is None


async def test_unknown_and_dropped_positions_are_410() -> None:
    async with resumable({"max_bytes": 200}) as (upstream, proxy, runtime):
        first, sid = await start(upstream, proxy)
        for i in range(1, 11):
            upstream.gate.release(event(i))
            assert (await next_event(first))[1] == i
        for last_id in (f"{sid}.1", f"{'A' * 24}.1", f"{sid}.99"):
            gone = await raw_request(proxy, "GET", "/", {"Last-Event-ID": last_id})
            assert gone.status == 410, last_id
            assert json.loads(await gone.body())["error"]["type"] == "stream_gone"
        recent = await raw_request(proxy, "GET", "/", {"Last-Event-ID": f"{sid}.9"})
        assert recent.status == 200
        assert (await next_event(recent))[1] == 10
        assert runtime.resume_stores.bytes <= 200 + 100


async def test_a_resume_with_another_token_is_410() -> None:
    auth = {"inbound_auth": {"tokens": ["token-one-aaaaaaaa", "token-two-bbbbbbbb"]}}
    async with resumable(**auth) as (upstream, proxy, _):
        _first, sid = await start_with_one_event(upstream, proxy, {"Authorization": "Bearer token-one-aaaaaaaa"})
        other = await raw_request(proxy, "GET", "/", {"Authorization": "Bearer token-two-bbbbbbbb",
                                                       "Last-Event-ID": f"{sid}.0"})
        assert other.status == 410
        same = await raw_request(proxy, "GET", "/", {"Authorization": "Bearer token-one-aaaaaaaa",
                                                      "Last-Event-ID": f"{sid}.0"})
        assert same.status == 200
        assert (await next_event(same))[1] == 1


async def test_detach_running_out_cancels_the_upstream_and_ends_with_a_detached_error() -> None:
    async with resumable({"detach": "300ms"}) as (upstream, proxy, runtime):
        first, sid = await start_with_one_event(upstream, proxy)
        first.close()
        await asyncio.wait_for(upstream.closed.wait(), WAIT)  # the upstream saw its connection closed
        late = await raw_request(proxy, "GET", "/", {"Last-Event-ID": f"{sid}.1"})
        assert late.status == 200
        chunk = await late.next_chunk()
        assert chunk is not None and chunk.startswith(b"event: error\n")
        assert json.loads(chunk.decode().split("data: ", 1)[1].split("\n")[0])["error"]["type"] == "detached"
        assert parse(chunk)[:2] == (sid, 2)
        try:
            await late.next_chunk()
            raise AssertionError("an error end is a truncated close")
        except Truncated:
            pass
        assert 'sseproxy_detached_streams 0.0' in runtime.metrics.render().decode()


async def test_comments_get_no_id_and_ride_with_the_next_event() -> None:
    async with resumable() as (upstream, proxy, _):
        first, sid = await start(upstream, proxy)
        upstream.gate.release(b": ping\n\n")
        upstream.gate.release(event(1))
        chunk = await first.next_chunk()
        assert chunk == f": ping\n\ndata: token 1\nid: {sid}.1\n\n".encode()


def test_with_id_keeps_line_endings_and_replaces_the_upstream_id() -> None:
    assert with_id(b"id: 7\r\ndata: x\r\n\r\n", "s.1") == b"data: x\r\nid: s.1\r\n\r\n"
    assert with_id(b"data: x\rid\r\r", "s.2") == b"data: x\rid: s.2\r\r"
    assert with_id(b": comment\n\n", "s.3") is None
    assert split_frames(b"data: a\n\ndata: b\r\n\r\n\n") == [b"data: a\n\n", b"data: b\r\n\r\n\n"]


def test_the_fast_path_numbers_an_event_exactly_as_with_id_does() -> None:
    """Most events take one bytes format (plain_event); whatever the framer returns, it is taken
    only where it gives what the general with_id gives."""
    pieces = [b"data: x\n\n", b'data: {"id": 1}\n\n', b"event: a\ndata: x\n\n", b"id: 7\ndata: x\n\n",
              b"data: x\nid: 7\n\n", b"data: x\nid\n\n", b"data: x\r\n\r\n", b"data: x\rid: 7\n\n",
              b"data: a\n\ndata: b\n\n", b"data: x\n\n\n", b": c\ndata: x\n\n", b": c\n\n", b"\n\n",
              b"\ndata: x\n\n", b"retry: 5\n\n"]
    taken = 0
    for piece in pieces:
        framer = EventFramer()
        out = framer.feed(piece)
        assert out == piece
        if plain_event(out, framer.frames, framer.lf_only):
            taken += 1
            assert out[:-1] + b"id: s.1\n\n" == with_id(out, "s.1"), piece
    assert taken == 4  # the first three and retry: every other one takes the general path


def test_last_event_id_is_only_ours() -> None:
    sid = "A" * 24
    assert parse_last_event_id(f"{sid}.3") == (sid, 3)
    for value in (None, "", "42", f"{sid}.x", "short.1", f"{sid}.", f"{sid}.-1"):
        assert parse_last_event_id(value) is None


async def test_memory_store_bounds_drop_the_streams_that_ended_longest_ago_first() -> None:
    store = MemoryStore(limit=1000)
    head = Head(200, "OK", ())
    for sid in ("a" * 24, "b" * 24, "c" * 24):
        store.open(sid, head, "", 10_000, 60)
        store.appender(sid)(1, b"x" * 400)
        store.end(sid, End.OK)
    assert await store.info("a" * 24) is None  # the earliest end went first
    assert await store.info("c" * 24) is not None
    assert store.bytes <= 1000


def test_memory_store_keeps_the_newest_events_within_max_bytes_numbered() -> None:
    """Events sit back to back in one buffer; past max_bytes the oldest go (the buffer is compacted
    now and then), and what is kept reads back with its number, byte for byte."""
    store = MemoryStore(limit=1 << 20)
    sid = "k" * 24
    store.open(sid, Head(200, "OK", ()), "", 1000, 60)
    append = store.appender(sid)
    for n in range(1, 501):
        append(n, b"data: %d\n\n" % n)
    first, last = store.bounds(sid) or (0, 0)
    assert last == 500 and 0 < 500 - first < 100 and store.bytes <= 1000
    assert store.read_now(sid, first - 2).gone
    kept = store.read_now(sid, first - 1).events
    assert kept == tuple((n, b"data: %d\n\n" % n) for n in range(first, 501))
    assert store.read_now(sid, 500).events == ()


def test_config_resume_key() -> None:
    import pytest
    from pydantic import ValidationError

    from sseproxy.config import Config
    from sseproxy.runtime import compile_config

    route = {"upstream": "http://127.0.0.1:9"}
    config = Config.model_validate({"resume_memory": "1MiB", "routes": [
        {**route, "resume": True}, {**route, "path": "/r/", "resume": {"store": "redis://127.0.0.1:6379/2",
                                                                        "ttl": "1m", "detach": "5s",
                                                                        "max_bytes": "1KiB"}},
        {**route, "path": "/off/", "resume": False}]})
    on, redis, off = compile_config(config).routes
    assert on.resume is not None and (on.resume.store, on.resume.ttl, on.resume.detach) == ("memory", 600, 60)
    assert redis.resume is not None and (redis.resume.store, redis.resume.max_bytes) == ("redis://127.0.0.1:6379/2",
                                                                                         1024)
    assert off.resume is None and config.resume_memory == 1024 * 1024
    for bad in ({"store": "disk"}, {"store": "redis://h:99999/0"}, {"store": "redis://h:1/x"}, {"max_bytes": 0},
                {"ttl": "soon"}, {"extra": 1}):
        with pytest.raises(ValidationError):
            Config.model_validate({"routes": [{**route, "resume": bad}]})


async def test_a_reattach_before_detach_runs_out_keeps_the_upstream() -> None:
    async with resumable({"detach": "300ms"}) as (upstream, proxy, _):
        first, sid = await start_with_one_event(upstream, proxy)
        first.close()
        again = await raw_request(proxy, "GET", "/", {"Last-Event-ID": f"{sid}.1"})
        assert again.status == 200
        try:  # three detach periods pass with a client attached: the upstream is never cancelled
            await asyncio.wait_for(upstream.closed.wait(), 0.9)
            raise AssertionError("the upstream was cancelled with a client attached")
        except TimeoutError:
            pass
        upstream.gate.release(event(2))
        assert await next_event(again) == (sid, 2, "token 2")
        upstream.gate.release(None)
        assert await again.next_chunk() is None


async def test_a_limit_slot_is_held_while_the_stream_runs_detached_and_freed_at_its_end() -> None:
    """The concurrent-stream limit counts streams, not clients: a detached stream still generates
    tokens, so its slot stays taken until the stream ends (here: detach running out)."""
    async with resumable({"detach": "300ms"}, limits={"concurrent_streams": 1}) as (upstream, proxy, _):
        first, _sid = await start_with_one_event(upstream, proxy)
        first.close()  # detached: the upstream runs on, the slot stays taken
        refused = await raw_request(proxy, "GET", "/", {})
        assert refused.status == 429
        await asyncio.wait_for(upstream.closed.wait(), WAIT)  # detach ran out: the stream ended
        for _ in range(100):  # bounded: until the stream's end has freed the slot
            again = await raw_request(proxy, "GET", "/", {})
            if again.status != 429:
                break
            await asyncio.sleep(0.02)
        assert again.status == 200
        again.close()


def metric_lines(runtime: Runtime, name: str) -> list[str]:
    return [line for line in runtime.metrics.render().decode().splitlines() if line.startswith(name)]


async def test_usage_is_counted_once_from_the_upstream_whoever_reads_it() -> None:
    """The client that started the stream hangs up before the usage event; a resume reads it, and
    a later resume replays the whole stream. The tokens are counted once: the upstream's events
    are metered by the stream's producer, never by what a follower writes or replays."""
    usage = b'data: {"choices": [], "usage": {"prompt_tokens": 19, "completion_tokens": 10}}\n\n'
    async with resumable() as (upstream, proxy, runtime):
        first, sid = await start_with_one_event(upstream, proxy)
        first.close()
        for _ in range(100):  # bounded: until the starting request has ended (its line logged, counted)
            if metric_lines(runtime, 'sseproxy_client_hangups_total{route="/"} 1.0'):
                break
            await asyncio.sleep(0.02)
        upstream.gate.release(usage)
        upstream.gate.release(None)
        again = await raw_request(proxy, "GET", "/", {"Last-Event-ID": f"{sid}.1"})
        assert b'"prompt_tokens": 19' in await again.body()  # read to the normal end
        replay = await raw_request(proxy, "GET", "/", {"Last-Event-ID": f"{sid}.0"})
        assert b'"prompt_tokens": 19' in await replay.body()
        assert metric_lines(runtime, "sseproxy_llm_tokens_total") == [
            'sseproxy_llm_tokens_total{kind="input",route="/"} 19.0',
            'sseproxy_llm_tokens_total{kind="output",route="/"} 10.0']
