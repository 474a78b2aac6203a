"""The inspector page in headless Chromium: a gated stream appears in the list, its event count goes
up as each gate opens, picking it shows its events and the plot, and after its end it moves to
"ended" with its outcome; a stream the upstream breaks ends as upstream_error. The screenshot is a
test artifact (SSEPROXY_INSPECTOR_SCREENSHOT=docs/inspector.png writes the README's)."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from browser import browser_page, require_browser_tools
from helpers import Gate, Truncated, running_app, running_proxy
from inspector_helpers import gated_paths_app, stream_client

CHAT, RESPONSES, OTHER = "/v1/chat/completions", "/v1/responses", "/v1/chat/completions/second"
WORDS = ["Streams", " are", " relayed", " event", " by", " event", ",", " never", " buffered", "."]


def row(table: str, path: str) -> str:
    """A JS expression: the row of ``table`` whose path cell is ``path`` (or undefined)."""
    return (f"[...document.querySelectorAll('#{table} tbody tr')]"
            f".find(r => r.querySelector('.path').textContent === {json.dumps(path)})")


def cell(table: str, path: str, cls: str) -> str:
    return f"{row(table, path)}?.querySelector('.{cls}')?.textContent"


def chunk(word: str) -> bytes:
    return b"data: " + json.dumps({"choices": [{"delta": {"content": word}}]}).encode() + b"\n\n"


async def test_the_page_follows_streams_live(tmp_path: Path) -> None:
    require_browser_tools()
    gates = {path: Gate() for path in (CHAT, RESPONSES, OTHER)}
    shot = Path(os.environ.get("SSEPROXY_INSPECTOR_SCREENSHOT") or tmp_path / "inspector.png")
    route = {"path": "/v1", "upstream": "", "strip_prefix": False}
    async with running_app(gated_paths_app(gates)) as up, \
            running_proxy({"routes": [route | {"upstream": up}]}) as (proxy, _), \
            browser_page(f"{proxy}/_sseproxy/") as page:
        await page.wait_for("document.getElementById('status').textContent === 'live'")
        chat = await stream_client(proxy, CHAT)
        await page.wait_for(f"{row('active', CHAT)} !== undefined")
        for i, word in enumerate(WORDS[:4], 1):
            gates[CHAT].release(chunk(word))
            assert await chat.next_chunk() == chunk(word)
            await page.wait_for(f"{cell('active', CHAT, 'events')} === '{i}'")  # before the next gate opens
        await page.command(click=f"#active tbody tr[data-id] >> text={json.dumps(CHAT)}")
        await page.wait_for("document.querySelectorAll('#events tbody tr').length === 4")
        await page.wait_for("document.querySelector('#events tbody tr .data').textContent.includes('event')")
        await page.wait_for("document.querySelectorAll('#plot rect').length === 4")

        # a second stream that the upstream breaks mid-way, and a third left in flight
        broken = await stream_client(proxy, RESPONSES)
        gates[RESPONSES].release(b"event: response.created\ndata: {\"id\": \"resp_1\"}\n\n")
        await broken.next_chunk()
        gates[RESPONSES].release(b"ABORT")
        with contextlib.suppress(Truncated):
            await broken.body()
        await page.wait_for(f"({cell('ended', RESPONSES, 'outcome')} || '').startsWith('upstream_error')")
        other = await stream_client(proxy, OTHER)
        gates[OTHER].release(chunk("Hi"))
        await other.next_chunk()
        await page.wait_for(f"{cell('active', OTHER, 'events')} === '1'")

        for i, word in enumerate(WORDS[4:], 5):
            gates[CHAT].release(chunk(word))
            assert await chat.next_chunk() == chunk(word)
            await page.wait_for(f"{cell('active', CHAT, 'events')} === '{i}'")
        gates[CHAT].release(None)
        assert await chat.next_chunk() is None
        await page.wait_for(f"{cell('ended', CHAT, 'outcome')} === 'ok (200)'")
        await page.wait_for(f"{row('active', CHAT)} === undefined")
        await page.wait_for(f"document.querySelectorAll('#events tbody tr').length === {len(WORDS)}")
        await page.wait_for("document.getElementById('picked-summary').textContent.includes('ended: ok')")
        await page.command(screenshot=str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert not any(item["kind"] == "pageerror" for item in page.seen), page.seen
        gates[OTHER].release(None)
        assert await other.body() == b""
