"""``sseproxy demo --resume``: the mock LLM behind a route with ``resume`` on (memory store), so a
new user sees a dropped stream pick up mid-answer, in curl and in a browser.

curl talks to the proxy directly: hang up, then resume with ``Last-Event-ID``. The page is served
through a ``CuttingRelay``, a TCP relay in front of the proxy that drops each new event stream after
a few events, as a Wi-Fi blip would. The page reads the answer with EventSource, which reconnects by
itself with ``Last-Event-ID``, and checks that the event numbers run on with none lost or repeated."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Callable

from aiohttp import web

from . import demo
from .loader import Overrides

ANSWER = demo.Answer(
    "Resuming works: this answer went on streaming into sseproxy's store while nobody was connected, "
    "and when you came back the proxy sent every event after the last one you had, then the live ones, "
    "without asking the model again.",
    delay=0.15)
CUT_AFTER = 8       # events the page gets before the relay drops its connection
RETRY_MS = 1000     # EventSource's reconnect delay, sent as `retry:` (the browser default is about 3 s)
STREAM_PATH = "/v1/chat/stream"
_EVENT_END = re.compile(rb"\nid: [^\n]*\n\n")  # the end of an event the proxy numbered (its ids are LF)
_TAIL = 256         # bytes kept between reads to find an event end split across them (an id line is < 100)
_RESUMING = b"last-event-id:"

PAGE = """<!doctype html><meta charset=utf-8><title>sseproxy demo: resumable streams</title>
<style>body{font:16px system-ui;max-width:42rem;margin:3rem auto}#out{white-space:pre-wrap;
border:1px solid #ccc;padding:1rem;min-height:4rem}#log{color:#555}</style>
<h1>sseproxy demo: resumable streams</h1>
<p>The answer streams with <code>EventSource</code> through a relay that drops the connection after
{cut_after} events, as a Wi-Fi blip would. The proxy keeps the answer going into its store; EventSource
reconnects by itself with <code>Last-Event-ID</code>, and the proxy sends every event after it.</p>
<button id=go>Ask</button><div id=out></div><ol id=log></ol>
<script>
document.getElementById('go').onclick = () => {
  const out = document.getElementById('out'), log = document.getElementById('log');
  out.textContent = ''; log.textContent = '';
  const note = (text) => {
    log.appendChild(document.createElement('li')).textContent = text;
    console.log(`resume: ${text}`);
  };
  let last = 0, lastId = '', away = false, problems = 0;
  const es = new EventSource('{stream}');
  es.onerror = () => {
    if (es.readyState !== EventSource.CONNECTING || away) return;
    away = true;
    note(`connection lost after event ${last}; EventSource reconnects by itself`);
  };
  es.onmessage = (e) => {
    const n = Number(e.lastEventId.split('.').pop());
    if (n !== last + 1) {
      problems++;
      note(`event ${n} after event ${last}: ${n <= last ? 'repeated' : 'lost'}`);
    }
    if (away) {
      away = false;
      note(`reconnected with Last-Event-ID ${lastId}: the proxy resumed at event ${n} from its store`);
    }
    last = n; lastId = e.lastEventId;
    if (e.data === '[DONE]') {
      es.close();
      note(problems ? `done: ${n} events, ${problems} out of order` : `done: ${n} events, each exactly once`);
      return;
    }
    out.textContent += JSON.parse(e.data).choices[0].delta.content || '';
  };
};
</script>""".replace("{cut_after}", str(CUT_AFTER)).replace("{stream}", STREAM_PATH)


async def chat_stream(request: web.Request) -> web.StreamResponse:
    """The answer on GET, for EventSource (which cannot POST), reconnecting ``RETRY_MS`` after a drop."""
    return await demo.stream_answer(request, request.app[demo.ANSWER_KEY], first=b"retry: %d\n" % RETRY_MS)


def mock_app() -> web.Application:
    app = demo.mock_llm_app(ANSWER, PAGE)
    app.router.add_get(STREAM_PATH, chat_stream)
    return app


def overrides(listen: str, upstream_port: int) -> Overrides:
    """One route, ``/`` to the mock, with resume on: the memory store and its defaults."""
    route = {"path": "/", "upstream": f"http://127.0.0.1:{upstream_port}", "resume": {"store": "memory"}}
    return Overrides(listen=listen, extra={"routes": [route]})


def instructions(proxy_url: str, page_url: str) -> str:
    payload = json.dumps({"model": "demo", "stream": True, "messages": [{"role": "user", "content": "Hello"}]})
    return "\n".join([
        "Resumable streams are on (route /, memory store). Try it:",
        f"  curl -N -i {proxy_url}/v1/chat/completions -H 'Content-Type: application/json' -d '{payload}'",
        "  It shows the Sseproxy-Stream-Id header, and every event ends with `id: <stream-id>.<n>`.",
        "  Press Ctrl-C mid-answer: the proxy keeps the answer going into its store. Copy the last id",
        "  you saw from that output and pick up right after it (any time in the next 10 minutes):",
        f"  curl -N -i {proxy_url}/v1/chat/completions -H 'Last-Event-ID: <stream-id>.<n>'",
        f"  or open {page_url}/ in a browser: a relay there drops the page's stream after {CUT_AFTER} events,",
        "  and EventSource reconnects by itself. Ctrl-C stops.",
    ])


class CuttingRelay:
    """A TCP relay in front of the proxy that aborts each connection (both sides) once it has carried
    ``after`` numbered events, unless its client sent ``Last-Event-ID`` (a resume, let through whole).
    ``on_cut`` learns each cut, with the number of the last event relayed."""

    def __init__(self, after: int, on_cut: Callable[[int], None]):
        self.after = after
        self.target: tuple[str, int] | None = None  # the proxy, set once it listens
        self._on_cut = on_cut
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str) -> int:
        """Listen on a free port of ``host``; returns the port."""
        self._server = await asyncio.start_server(self._connection, host, 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        upstream: asyncio.StreamWriter | None = None
        dropped = True
        try:
            if self.target is not None:
                up_reader, upstream = await asyncio.open_connection(*self.target)
                link = Link(self.after)
                async with asyncio.TaskGroup() as pumps:
                    pumps.create_task(self._requests(reader, upstream, link))
                    pumps.create_task(self._responses(up_reader, writer, link))
                dropped = False
        except* (OSError, _Cut):
            pass
        finally:
            for w in (writer, upstream):
                if w is not None and dropped:
                    w.transport.abort()
                elif w is not None:
                    w.close()
            self._tasks.discard(task)

    @staticmethod
    async def _requests(reader: asyncio.StreamReader, upstream: asyncio.StreamWriter, link: Link) -> None:
        while data := await reader.read(65536):
            link.saw_request(data)
            upstream.write(data)
            await upstream.drain()
        with contextlib.suppress(OSError):
            upstream.write_eof()

    async def _responses(self, up_reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: Link) -> None:
        while data := await up_reader.read(65536):
            cut = link.cut_point(data)
            writer.write(data if cut is None else data[:cut])
            await writer.drain()
            if cut is not None:
                self._on_cut(link.events)
                raise _Cut
        writer.close()


class _Cut(Exception):
    """The relay dropped a connection on purpose."""


class Link:
    """One relayed connection: whether its client resumes, and the events relayed to it so far."""

    def __init__(self, after: int):
        self.after = after
        self.resuming = False
        self.events = 0
        self._request_tail = b""
        self._tail = b""

    def saw_request(self, data: bytes) -> None:
        seen = (self._request_tail + data).lower()
        self.resuming = self.resuming or _RESUMING in seen
        self._request_tail = seen[-len(_RESUMING):]

    def cut_point(self, data: bytes) -> int | None:
        """Where in ``data`` the ``after``-th event ends, if it ends there and this is no resume."""
        joined = self._tail + data
        for m in _EVENT_END.finditer(joined):
            if m.end() <= len(self._tail):
                continue  # counted with the read before
            self.events += 1
            if self.events == self.after and not self.resuming:
                return m.end() - len(self._tail)
        self._tail = joined[-_TAIL:]
        return None
