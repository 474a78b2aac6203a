"""End to end in a real browser: headless Chromium loads a page through sseproxy and gets each event
before the upstream sends the next, with EventSource and with fetch() reading response.body; and a
real Vite dev server's HMR WebSocket works through the proxy."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from aiohttp import web
from browser import E2E, browser_page, page_site, require_browser_tools
from helpers import Gate, free_port, running_app, running_proxy

PAGE = """<!doctype html><meta charset=utf-8><title>stream</title><body>
<script>
const now = () => performance.timeOrigin + performance.now();
const es = new EventSource('/api/events');
es.onmessage = (e) => window.report({kind: 'sse', data: e.data, at: now()});
(async () => {
  const r = await fetch('/api/chat', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: '{}'});
  const reader = r.body.getReader(); const dec = new TextDecoder(); let buf = '';
  for (;;) {
    const {value, done} = await reader.read(); if (done) break;
    buf += dec.decode(value, {stream: true}); let i;
    while ((i = buf.indexOf('\\n\\n')) >= 0) {
      const ev = buf.slice(0, i); buf = buf.slice(i + 2);
      window.report({kind: 'fetch', data: ev.replace(/^data: /, ''), at: now()});
    }
  }
  window.report({kind: 'fetch-done'});
})();
</script>"""
EVENTS = 5


def stream_site(gates: dict[str, Gate], sent: dict[str, float]) -> web.Application:
    async def stream(request: web.Request) -> web.StreamResponse:
        kind = "sse" if request.path.endswith("events") else "fetch"
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        while (data := await gates[kind].next()) is not None:
            await response.write(b"data: " + data + b"\n\n")
            sent[f"{kind}:{data.decode()}"] = time.time() * 1000
        await response.write_eof()
        return response

    return page_site({"/": PAGE}, web.get("/api/events", stream), web.post("/api/chat", stream))


async def test_page_gets_each_event_before_the_next_is_sent() -> None:
    require_browser_tools()
    gates = {"sse": Gate(), "fetch": Gate()}
    sent: dict[str, float] = {}
    gaps: dict[str, list[float]] = {"sse": [], "fetch": []}
    async with running_app(stream_site(gates, sent)) as up, running_proxy(
            {"routes": [{"upstream": up}]}) as (proxy, _), browser_page(f"{proxy}/") as page:
        for kind in ("sse", "fetch"):
            for i in range(EVENTS):
                gates[kind].release(f"token-{i}".encode())  # the next one stays behind the gate ...
                got = await page.expect(lambda item, k=kind: item["kind"] == k)  # ... until the page has this one
                assert got["data"] == f"token-{i}"
                gaps[kind].append(got["at"] - sent[f"{kind}:token-{i}"])
        gates["fetch"].release(None)
        await page.expect(lambda item: item["kind"] == "fetch-done")
        gates["sse"].release(None)
    report = ", ".join(f"{k}: " + " ".join(f"{g:.1f}" for g in v) + " ms" for k, v in gaps.items())
    print(f"\nsend-to-page gap per event: {report}", file=sys.stderr)
    out = os.environ.get("SSEPROXY_E2E_REPORT")
    if out:
        Path(out).write_text(report + "\n")


VITE_MAIN = """import { message } from './msg.js'
function render(m) { document.getElementById('app').textContent = m; window.report?.({kind: 'render', text: m}) }
render(message)
if (import.meta.hot) import.meta.hot.accept('./msg.js', (mod) => render(mod.message))
"""


async def test_vite_hmr_through_the_proxy() -> None:
    require_browser_tools()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "index.html").write_text('<!doctype html><div id="app"></div><script type="module" src="/main.js">'
                                         "</script>")
        (root / "main.js").write_text(VITE_MAIN)
        (root / "msg.js").write_text("export const message = 'version one'\n")
        port = free_port()
        vite = await asyncio.create_subprocess_exec(
            str(E2E / "node_modules" / ".bin" / "vite"), "--host", "127.0.0.1", "--port", str(port), "--strictPort",
            cwd=root, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            assert vite.stdout is not None
            line = b""
            while b"Local" not in line:
                line = await asyncio.wait_for(vite.stdout.readline(), 60)
                assert line, "vite exited"
            config = {"routes": [{"upstream": f"http://127.0.0.1:{port}", "websocket": True}]}
            async with running_proxy(config) as (proxy, _), browser_page(f"{proxy}/") as page:
                await page.expect(lambda i: i["kind"] == "render" and i["text"] == "version one")
                await page.expect(lambda i: i["kind"] == "console" and "[vite] connected" in i["text"])
                (root / "msg.js").write_text("export const message = 'version two'\n")
                await page.expect(lambda i: i["kind"] == "render" and i["text"] == "version two")
                assert not any(i["kind"] == "pageerror" for i in page.seen)
        finally:
            vite.terminate()
            try:
                await asyncio.wait_for(vite.wait(), 10)
            except TimeoutError:
                vite.kill()
                await vite.wait()
            shutil.rmtree(root / "node_modules", ignore_errors=True)
