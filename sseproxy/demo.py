"""``sseproxy demo``: a built-in mock LLM upstream that streams an OpenAI-style chat completion
token by token, with the proxy in front, so a new user sees streaming work in one command.

``sseproxy demo --recordings`` puts the proxy in front of the shipped recordings instead
(``recordings/``: an OpenAI chat completion with its usage chunk, an Anthropic messages stream, and an
OpenAI stream cut mid-answer), replayed in process with their recorded timing."""

from __future__ import annotations

import asyncio
import json
import shlex
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from .recording import Recording
from .replay import ReplayOptions, ReplayServer

RECORDINGS = Path(__file__).parent / "recordings"  # shipped in the wheel (pyproject's package-data)

ANSWER = ("Streaming works: each token left the mock model, passed through sseproxy, and reached you "
          "the moment it was sent, with nothing buffered, compressed or batched on the way.")
TOKEN_DELAY = 0.06


@dataclass(frozen=True)
class Answer:
    """What the mock model says, and how fast: ``demo --resume`` takes a longer, slower answer so a
    person has time to hang up mid-answer."""

    text: str = ANSWER
    delay: float = TOKEN_DELAY  # seconds between tokens


ANSWER_KEY = web.AppKey("answer", Answer)

PAGE = """<!doctype html><meta charset=utf-8><title>sseproxy demo</title>
<style>body{font:16px system-ui;max-width:42rem;margin:3rem auto}#out{white-space:pre-wrap;
border:1px solid #ccc;padding:1rem;min-height:4rem}</style>
<h1>sseproxy demo</h1><p>Tokens stream from a mock LLM through sseproxy with <code>fetch()</code>:</p>
<button id=go>Ask</button><div id=out></div>
<script>
document.getElementById('go').onclick = async () => {
  const out = document.getElementById('out'); out.textContent = '';
  const r = await fetch('/v1/chat/completions', {method: 'POST', headers: {'Content-Type': 'application/json'},
    body: JSON.stringify({model: 'demo', stream: true, messages: [{role: 'user', content: 'Hello'}]})});
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader(); let buf = '';
  for (;;) { const {value, done} = await reader.read(); if (done) break; buf += value;
    let i; while ((i = buf.indexOf('\\n\\n')) >= 0) { const ev = buf.slice(0, i); buf = buf.slice(i + 2);
      const data = ev.replace(/^data: /, ''); if (data === '[DONE]') return;
      out.textContent += JSON.parse(data).choices[0].delta.content || ''; } }
};
</script>"""


def tokens(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def chunk(content: str | None, finish: str | None = None) -> bytes:
    delta = {"content": content} if content is not None else {}
    body = {"id": "chatcmpl-demo", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": "sseproxy-demo", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return f"data: {json.dumps(body)}\n\n".encode()


async def chat_completions(request: web.Request) -> web.StreamResponse:
    try:
        body = await request.json()
    except ValueError:
        return web.json_response({"error": {"message": "body must be JSON"}}, status=400)
    answer = request.app[ANSWER_KEY]
    if not body.get("stream"):
        return web.json_response({"id": "chatcmpl-demo", "object": "chat.completion", "model": "sseproxy-demo",
                                  "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                                               "finish_reason": "stop"}]})
    return await stream_answer(request, answer)


async def stream_answer(request: web.Request, answer: Answer, first: bytes = b"") -> web.StreamResponse:
    """The answer as a chat-completion event stream, one token per event; ``first`` is put in
    front of the first event (e.g. a ``retry:`` field)."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for token in tokens(answer.text):
        await response.write(first + chunk(token))
        first = b""
        await asyncio.sleep(answer.delay)
    await response.write(chunk(None, "stop"))
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def mock_llm_app(answer: Answer = Answer(), page: str = PAGE) -> web.Application:
    """The mock model at ``POST /v1/chat/completions``, and ``page`` at ``/``."""

    async def serve_page(request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    app = web.Application()
    app[ANSWER_KEY] = answer
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/", serve_page)
    return app


async def start_mock(host: str = "127.0.0.1", port: int = 0, app: web.Application | None = None
                     ) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app or mock_llm_app(), access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner, int(runner.addresses[0][1])


async def serve_mock_until_stopped(host: str, port: int, announce: Callable[[str], None]) -> None:
    """Only the mock upstream, until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner, bound = await start_mock(host, port)
    announce(f"mock LLM upstream listening on http://{host}:{bound}")
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def instructions(proxy_url: str) -> str:
    payload = '{"model": "demo", "stream": true, "messages": [{"role": "user", "content": "Hello"}]}'
    return (f"Try it:\n  curl -N {proxy_url}/v1/chat/completions -H 'Content-Type: application/json' "
            f"-d '{payload}'\n  or open {proxy_url}/ in a browser. Ctrl-C stops.")


async def start_replay(directory: Path = RECORDINGS) -> tuple[ReplayServer, int]:
    """The recordings in ``directory`` served back at their recorded pace, on a free loopback port."""
    server = ReplayServer(ReplayOptions(directory, access_log=False))
    _, port = await server.start("127.0.0.1", 0)
    return server, port


def curl_command(proxy_url: str, recording: Recording) -> str:
    """A shell command that sends ``recording``'s request to the proxy (quoted for a POSIX shell)."""
    request = recording.request
    url = proxy_url + request.path + (f"?{request.query}" if request.query else "")
    parts = ["curl", "-N", url]
    if request.method != ("POST" if request.body else "GET"):
        parts += ["-X", request.method]
    content_type = next((value for name, value in request.headers if name.lower() == "content-type"), None)
    if content_type is not None:
        parts += ["-H", f"Content-Type: {content_type}"]
    if request.body:
        parts += ["-d", request.body.decode("utf-8", "replace")]
    return shlex.join(parts)


def describe(recording: Recording) -> str:
    resp = recording.response
    if resp.frames is None:
        return f"status {resp.status}, a body of {len(resp.body or b'')} bytes"
    last = resp.frames[-1].t if resp.frames else resp.ttfb_ms
    ending = ", then the connection is cut" if resp.end == "error" else ""
    return f"status {resp.status}, {len(resp.frames)} events over {last / 1000:.1f} s{ending}"


def recording_instructions(proxy_url: str, recordings: Sequence[tuple[str, Recording]]) -> str:
    lines = [f"Replaying {len(recordings)} recorded exchanges with their recorded timing. Try them:"]
    for name, recording in recordings:
        lines += [f"  # {name}: {describe(recording)}", f"  {curl_command(proxy_url, recording)}"]
    lines.append("Ctrl-C stops.")
    return "\n".join(lines)
