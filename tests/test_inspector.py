"""The inspector over real sockets: the listing's fields, the feed's starts, events and ends in
order with a gated upstream, redaction of an injected key the upstream echoes back, control
characters and the preview cut, the page and its files, and the feed's clean end at shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import tomllib
from pathlib import Path

import aiohttp
from helpers import Gate, Truncated, raw_request, running_app, running_listener, running_proxy
from inspector_helpers import Feed, gated_paths_app, stream_client
from upstreams import echo_app

from sseproxy.framing import StreamKind, count_frames, parse_event
from sseproxy.hooks import ExchangeInfo, open_hooks
from sseproxy.inspector import Inspector, StreamView

KEY = "sk-inspector-test-0123456789abcdef"


async def listing(proxy: str) -> dict[str, object]:
    async with aiohttp.ClientSession() as session, session.get(f"{proxy}/_sseproxy/streams") as r:
        assert r.status == 200
        assert r.headers["Cache-Control"] == "no-store"
        return await r.json()  # type: ignore[no-any-return]


async def test_listing_and_feed_follow_a_stream_from_start_to_end() -> None:
    gates = {"/v1/chat": Gate()}
    route = {"path": "/v1", "request_headers": {"set": {"Authorization": f"Bearer {KEY}"}}}
    async with running_app(gated_paths_app(gates)) as up, \
            running_proxy({"routes": [{"upstream": up, "strip_prefix": False, **route}]}) as (proxy, _):
        feed = await Feed.open(proxy)
        event, snapshot = await feed.next()
        assert event == "snapshot" and snapshot["active"] == [] and snapshot["ended"] == []
        client = await stream_client(proxy, "/v1/chat?user=1")
        _, start = await feed.until("start")
        assert {k: start[k] for k in ("route", "method", "path", "client", "events", "bytes", "ttfe_ms", "outcome")} \
            == {"route": "/v1", "method": "GET", "path": "/v1/chat", "client": "127.0.0.1", "events": 0, "bytes": 0,
                "ttfe_ms": None, "outcome": None}
        stream_id = start["id"]
        _, head = await feed.until("head")
        assert head["id"] == stream_id and head["status"] == 200 and head["kind"] == "sse"

        gates["/v1/chat"].release(b"event: token\ndata: hello\n\n")
        assert await client.next_chunk() == b"event: token\ndata: hello\n\n"
        seen, frame = await feed.until("frame")
        assert [e for e, _ in seen] == ["frame"]
        assert frame | {"t": 0, "ttfe_ms": 0} == {"id": stream_id, "n": 1, "t": 0, "name": "token", "size": 24,
                                                  "data": "hello", "events": 1, "bytes": 26, "ttfe_ms": 0}
        assert frame["ttfe_ms"] > 0

        listed = await listing(proxy)
        assert listed["ended"] == []
        [active] = listed["active"]  # type: ignore[misc]
        assert set(active) >= {"id", "route", "method", "path", "client", "age_s", "events", "bytes", "ttfe_ms",
                               "outcome"}
        assert (active["id"], active["events"], active["bytes"], active["outcome"]) == (stream_id, 1, 26, None)
        assert active["ttfe_ms"] == frame["ttfe_ms"] and active["age_s"] >= 0

        # the upstream echoes the injected key, a terminal escape and a long line in three events at once
        echoed = f"data: your key is {KEY}, isn't it\n\n".encode() + b"data: \x1b[31mred\x07\n\n" + \
            b"data: " + b"x" * 500 + b"\n\n"
        gates["/v1/chat"].release(echoed)
        assert await client.next_chunk() == echoed  # relayed untouched: redaction is for the page only
        frames = [(await feed.until("frame"))[1] for _ in range(3)]
        assert [f["n"] for f in frames] == [2, 3, 4]
        assert frames[0]["data"] == "your key is <redacted>, isn't it"
        assert frames[1]["data"] == "\\x1b[31mred\\x07"
        assert len(frames[2]["data"]) == 200 and frames[2]["data"].endswith("…") and frames[2]["size"] == 506

        gates["/v1/chat"].release(None)
        assert await client.next_chunk() is None
        _, end = await feed.until("end")
        assert (end["id"], end["outcome"], end["events"], end["status"]) == (stream_id, "ok", 4, 200)
        listed = await listing(proxy)
        assert listed["active"] == []
        [ended] = listed["ended"]  # type: ignore[misc]
        assert (ended["id"], ended["outcome"], ended["events"]) == (stream_id, "ok", 4)
        assert KEY.encode() not in feed.raw and KEY not in json.dumps(listed)
        assert KEY[3:20].encode() not in feed.raw


async def test_failed_and_non_stream_exchanges() -> None:
    """A stream the upstream breaks ends with its outcome; a plain JSON answer leaves the list."""
    gates = {"/broken": Gate()}
    async with running_app(gated_paths_app(gates)) as up, running_app(echo_app()) as echo, \
            running_proxy({"routes": [{"path": "/json", "upstream": echo}, {"upstream": up}]}) as (proxy, _):
        feed = await Feed.open(proxy)
        await feed.until("snapshot")
        plain = await raw_request(proxy, "GET", "/json/x")
        await plain.body()
        _, start = await feed.until("start")
        _, drop = await feed.until("drop")
        assert drop == {"id": start["id"]}
        client = await stream_client(proxy, "/broken")
        gates["/broken"].release(b"data: one\n\n")
        await feed.until("frame")
        gates["/broken"].release(b"ABORT")
        with contextlib.suppress(Truncated):  # a reset mid-stream: an error event, then a truncated close
            await client.body()
        _, end = await feed.until("end")
        assert end["path"] == "/broken" and end["outcome"] == "upstream_error" and end["events"] == 1
        listed = await listing(proxy)
        assert [s["path"] for s in listed["ended"]] == ["/broken"]  # type: ignore[attr-defined]


async def test_the_page_and_its_files_are_served_from_the_package() -> None:
    async with running_proxy({"routes": [{"upstream": "http://127.0.0.1:9"}]}) as (proxy, _):
        page = await raw_request(proxy, "GET", "/_sseproxy/")
        assert page.status == 200 and page.headers["content-type"].startswith("text/html")
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert page.headers["referrer-policy"] == "no-referrer"
        html = (await page.body()).decode()
        assert '<script src="inspector.js">' in html and "http" not in html.replace("http-equiv", "")
        for name, kind in (("inspector.js", "text/javascript"), ("inspector.css", "text/css")):
            asset = await raw_request(proxy, "GET", f"/_sseproxy/{name}")
            assert asset.status == 200 and asset.headers["content-type"].startswith(kind)
            body = (await asset.body()).decode()
            assert "https://" not in body and "//cdn" not in body
        moved = await raw_request(proxy, "GET", "/_sseproxy?token=x")
        assert moved.status == 308 and moved.headers["location"] == "/_sseproxy/?token=x"
        missing = await raw_request(proxy, "GET", "/_sseproxy/nothing")
        assert missing.status == 404


async def test_the_feed_ends_cleanly_at_shutdown() -> None:
    """Stopping the proxy ends an open feed at once with a ``shutdown`` event and the final chunk,
    not after the grace period, and no new feed opens."""
    async with running_listener({"routes": [{"upstream": "http://127.0.0.1:9"}], "shutdown_grace": 20}) \
            as (proxy, listener):
        feed = await Feed.open(proxy)
        await feed.until("snapshot")
        stopping = asyncio.create_task(listener.stop())
        _, bye = await feed.until("shutdown", timeout=3)
        assert bye == {}
        assert await feed.response.next_chunk(3) is None  # the final chunk: a clean end
        await asyncio.wait_for(stopping, 5)
        assert listener.runtime.inspector.subscribe() is None


def test_with_no_page_open_a_view_is_told_of_no_write() -> None:
    """No page open: a stream's view is not among its exchange's writers (a write costs it nothing)
    and shows the counts of the tally the relay keeps; the first page to open makes the views of
    streams already running writers, and the last to close stops it."""
    inspector = Inspector()
    published: list[str] = []
    inspector._publish = lambda kind, payload: published.append(kind)  # type: ignore[method-assign]

    async def run() -> None:
        info = ExchangeInfo(id=1, route="r", method="GET", path="/p", query="", client="127.0.0.1",
                            headers=None,  # type: ignore[arg-type]
                            started=asyncio.get_running_loop().time())
        hook = open_hooks([inspector], info)[0]
        assert isinstance(hook, StreamView)
        assert info.writers == []
        hook.response(200, None, StreamKind.SSE)  # type: ignore[arg-type]
        info.tally.wrote(20, 1.0, 2)  # as the relay counts "data: a\n\ndata: b\r\n\r\n"
        info.tally.wrote(9, 1.5, 1)
        assert (hook.events, hook.nbytes, hook.first_event_at, hook.last_event_at) == (3, 29, 1.0, 1.5)
        assert published == []
        page = inspector.subscribe()
        assert page is not None and info.writers == [hook]
        info.tally.wrote(9, 2.0, 1)
        hook.data(b"data: c\n\n", 2.0, 1)
        assert published == ["frame"]
        inspector.unsubscribe(page)
        assert info.writers == []

    asyncio.run(run())


def test_frames_are_counted_as_the_framer_counts_them() -> None:
    assert count_frames(StreamKind.SSE, b"data: a\r\n\r\ndata: b\r\rdata: c\n\n") == 3
    assert count_frames(StreamKind.LINES, b'{"a":1}\n{"b":2}\n') == 2
    assert count_frames(StreamKind.RAW, b"x\n\n") == 0
    assert parse_event(b": keep-alive") == ("(comment)", b"keep-alive")
    assert parse_event(b"id: 3\nretry: 10") == ("(no data)", b"id: 3\nretry: 10")
    assert parse_event(b"event: e\ndata: a\ndata: b") == ("e", b"a\\nb")


def test_the_page_files_are_in_the_wheel() -> None:
    """pyproject's package-data covers every file of the page, so an installed sseproxy serves it."""
    root = Path(__file__).parent.parent
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["sseproxy"]
    files = [p.relative_to(root / "sseproxy").as_posix() for p in (root / "sseproxy" / "static").rglob("*")
             if p.is_file()]
    assert len(files) == 3 and all(any(fnmatch.fnmatch(f, pattern) for pattern in patterns) for f in files), files
