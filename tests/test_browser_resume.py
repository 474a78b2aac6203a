"""Resumable streams in a real browser: headless Chromium reads a gated upstream through sseproxy
(memory store) and a TCP relay in the test that cuts the connection mid-answer, as a Wi-Fi blip
would. The browser reconnects by itself with ``Last-Event-ID`` (EventSource; fetch-event-source doing
a POST), the events that were sent while it was away come from the store, then the live ones follow,
and the page ends with every event exactly once, in order, while the upstream saw one request.

The relay holds the reconnect until the missed events are in the store, so the resume really
replays them: gates, never sleeps."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from browser import E2E, Browser, browser_page, page_site, require_browser_tools
from helpers import WAIT, Gate, released_stream, running_app, running_proxy
from test_resume import stored

from sseproxy.runtime import Runtime

FES = E2E / "node_modules" / "@microsoft" / "fetch-event-source" / "lib" / "esm"
TOKENS = 6
CUT_AFTER = 3   # the page has events 1-3 when the connection is cut
MISSED = 5      # events 4-5 are sent while it is away; 6 is live after the resume

EVENTSOURCE_PAGE = """<!doctype html><meta charset=utf-8><title>resume</title><body><script>
window.got = [];
const es = new EventSource('/events');
es.onopen = () => window.report({kind: 'open'});
es.onmessage = (e) => { window.got.push(e.data); window.report({kind: 'message', data: e.data, id: e.lastEventId}); };
es.onerror = () => window.report({kind: 'error', state: es.readyState});
</script>"""

FES_PAGE = """<!doctype html><meta charset=utf-8><title>resume</title><body><script type=module>
import { fetchEventSource } from '/fes/index.js';
class Fatal extends Error {}
window.got = [];
fetchEventSource('/events', {
  method: 'POST', headers: {'Content-Type': 'application/json'}, body: '{"q": "hello"}', openWhenHidden: true,
  async onopen(r) {
    window.report({kind: 'open', status: r.status, sid: r.headers.get('sseproxy-stream-id')});
    if (r.status !== 200) throw new Fatal(`status ${r.status}`);
  },
  onmessage(m) { window.got.push(m.data); window.report({kind: 'message', data: m.data, id: m.id}); },
  onerror(err) {  // returning nothing: it retries, after the stream's retry: interval, with Last-Event-ID
    window.report({kind: 'error', text: String(err)});
    if (err instanceof Fatal) throw err;
  },
  onclose() { window.report({kind: 'closed'}); },
}).then(() => window.report({kind: 'done'}), (err) => window.report({kind: 'failed', text: String(err)}));
</script>"""


@dataclass
class Upstream:
    """Serves the pages, the fetch-event-source module, and one gated event stream at /events."""

    gate: Gate = field(default_factory=Gate)
    streams: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)

    def app(self) -> web.Application:
        async def module(request: web.Request) -> web.Response:
            name = request.match_info["name"].removesuffix(".js")  # the ESM build imports './fetch'
            if name not in ("index", "fetch", "parse"):
                raise web.HTTPNotFound()
            return web.Response(body=(FES / f"{name}.js").read_bytes(), content_type="text/javascript")

        async def events(request: web.Request) -> web.StreamResponse:
            self.streams.append((request.method, dict(request.headers), await request.read()))
            return await released_stream(request, self.gate, {"Cache-Control": "no-cache"})

        return page_site({"/": EVENTSOURCE_PAGE, "/fes.html": FES_PAGE}, web.get("/fes/{name}", module),
                         web.route("*", "/events", events))


def token(i: int) -> bytes:
    retry = "retry: 100\n" if i == 1 else ""  # the browser reconnects 100 ms after a drop
    return f"{retry}data: token {i}\n\n".encode()


class Relay:
    """A TCP relay between the browser and the proxy. ``cut()`` aborts every connection through it
    (both sides), as a network drop would. While ``hold()`` is on, a new connection's request head
    is read and recorded, and the connection waits for ``let_through()`` before it reaches the
    proxy. Every request head the browser sent is kept in ``heads``."""

    def __init__(self, target: str):
        self._host, port = target.removeprefix("http://").rsplit(":", 1)
        self._port = int(port)
        self._open = asyncio.Event()
        self._open.set()
        self._sent: list[bytearray] = []  # what the browser sent, per connection
        self._changed = asyncio.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.url = ""

    @property
    def heads(self) -> list[str]:
        return [head.decode("latin-1") for sent in self._sent for head in re.findall(rb"[A-Z]+ /\S* HTTP/1\.1\r\n"
                                                                                     rb"(?:.+\r\n)*\r\n", sent)]

    def last_event_ids(self) -> list[str]:
        return [m.group(1) for head in self.heads
                for m in [re.search(r"(?im)^last-event-id: *(.*?)\r$", head)] if m is not None]

    def hold(self) -> None:
        self._open.clear()

    def let_through(self) -> None:
        self._open.set()

    def cut(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()

    async def wait_for_last_event_id(self, count: int) -> list[str]:
        """Wait (bounded) until the browser has sent ``count`` requests with Last-Event-ID."""
        async with asyncio.timeout(WAIT):
            while len(ids := self.last_event_ids()) < count:
                self._changed.clear()
                await self._changed.wait()
        return ids

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        sent = bytearray()
        self._sent.append(sent)
        up_writer: asyncio.StreamWriter | None = None
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            sent += head
            self._changed.set()
            await asyncio.wait_for(self._open.wait(), WAIT * 2)
            up_reader, up_writer = await asyncio.open_connection(self._host, self._port)
            self._writers.add(up_writer)
            up_writer.write(head)
            await asyncio.gather(self._pipe(reader, up_writer, sent), self._pipe(up_reader, writer, None))
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    self._writers.discard(w)
                    w.transport.abort()
            self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sent: bytearray | None) -> None:
        try:
            while data := await reader.read(65536):
                if sent is not None:
                    sent += data
                    self._changed.set()
                writer.write(data)
                await writer.drain()
        finally:
            writer.transport.abort()  # one side gone: the whole connection is

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Relay]:
        server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        try:
            yield self
        finally:
            server.close()
            self.cut()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def resume_site(page: str) -> AsyncIterator[tuple[Upstream, Runtime, Relay, Browser]]:
    require_browser_tools()
    upstream = Upstream()
    async with running_app(upstream.app()) as up, running_proxy(
            {"heartbeat": 30, "routes": [{"upstream": up, "resume": True}]}) as (proxy, runtime), \
            Relay(proxy).running() as relay, browser_page(f"{relay.url}{page}") as browser:
        yield upstream, runtime, relay, browser


async def message(page: Browser, i: int) -> str:
    """Wait for event ``i`` in the page; its id (``<stream-id>.<n>``)."""
    got = await page.expect(lambda item: item["kind"] == "message")
    assert got["data"] == f"token {i}", got
    return str(got["id"])


async def cut_and_resume(upstream: Upstream, runtime: Runtime, relay: Relay, page: Browser) -> str:
    """Events 1..CUT_AFTER, a cut, events up to MISSED sent while the page is away, the page's own
    reconnect (held until they are stored) and the rest. Returns the stream id."""
    ids = []
    for i in range(1, CUT_AFTER + 1):
        upstream.gate.release(token(i))
        ids.append(await message(page, i))  # the next one stays behind the gate until the page has this one
    sid = ids[0].rsplit(".", 1)[0]
    assert ids == [f"{sid}.{i}" for i in range(1, CUT_AFTER + 1)]

    relay.hold()
    relay.cut()  # mid-answer: the browser sees its connection drop
    await page.expect(lambda item: item["kind"] == "error")
    for i in range(CUT_AFTER + 1, MISSED + 1):
        upstream.gate.release(token(i))  # the upstream goes on into the store, with nobody attached
    await stored(runtime, sid, MISSED)
    assert await relay.wait_for_last_event_id(1) == [f"{sid}.{CUT_AFTER}"]  # the browser's own reconnect
    relay.let_through()

    for i in range(CUT_AFTER + 1, MISSED + 1):  # replayed from the store
        assert await message(page, i) == f"{sid}.{i}"
    for i in range(MISSED + 1, TOKENS + 1):  # then live
        upstream.gate.release(token(i))
        assert await message(page, i) == f"{sid}.{i}"
    upstream.gate.release(None)  # a normal end
    return sid


async def exactly_once_in_order(page: Browser) -> None:
    expected = json.dumps([f"token {i}" for i in range(1, TOKENS + 1)], separators=(",", ":"))  # as JS writes it
    await page.wait_for(f"JSON.stringify(window.got) === {json.dumps(expected)}")


async def test_eventsource_reconnects_by_itself_and_gets_every_event_once() -> None:
    async with resume_site("/") as (upstream, runtime, relay, page):
        sid = await cut_and_resume(upstream, runtime, relay, page)
        # after the end EventSource reconnects once more; the 204 stops it (readyState CLOSED)
        await page.expect(lambda item: item["kind"] == "error" and item["state"] == 2)
        await exactly_once_in_order(page)
        assert relay.last_event_ids() == [f"{sid}.{CUT_AFTER}", f"{sid}.{TOKENS}"]
        assert len(upstream.streams) == 1  # neither reconnect reached the upstream
        assert "last-event-id" not in {k.lower() for k in upstream.streams[0][1]}
        assert sum(item["kind"] == "open" for item in page.seen) == 2  # the first request and the resume
        metrics = runtime.metrics.render().decode()
        assert 'sseproxy_resumes_total{result="ok",route="/"} 1.0' in metrics
        assert 'sseproxy_resumes_total{result="done",route="/"} 1.0' in metrics
        assert f'sseproxy_resume_replayed_events_total{{route="/"}} {MISSED - CUT_AFTER}.0' in metrics


async def test_fetch_event_source_post_retries_with_last_event_id_and_gets_every_event_once() -> None:
    require_browser_tools()
    if not (FES / "index.js").exists():
        reason = "@microsoft/fetch-event-source is not in tests/e2e/node_modules (npm install --prefix tests/e2e)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI installs it: see .ci/run)")
        pytest.skip(reason)
    async with resume_site("/fes.html") as (upstream, runtime, relay, page):
        sid = await cut_and_resume(upstream, runtime, relay, page)
        await page.expect(lambda item: item["kind"] == "closed")
        await page.expect(lambda item: item["kind"] == "done")
        await exactly_once_in_order(page)
        assert relay.last_event_ids() == [f"{sid}.{CUT_AFTER}"]  # fetch-event-source stops at a normal end
        resumed = [h for h in relay.heads if "last-event-id" in h.lower()]
        assert resumed[0].startswith("POST /events ")
        assert len(upstream.streams) == 1
        method, headers, body = upstream.streams[0]
        assert (method, body) == ("POST", b'{"q": "hello"}')
        assert "last-event-id" not in {k.lower() for k in headers}
        opens = [item for item in page.seen if item["kind"] == "open"]
        assert [(o["status"], o["sid"]) for o in opens] == [(200, sid), (200, sid)]
        metrics = runtime.metrics.render().decode()
        assert 'sseproxy_resumes_total{result="ok",route="/"} 1.0' in metrics
