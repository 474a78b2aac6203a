"""Real clients against ``sseproxy replay`` (a process) playing the shipped recordings: the openai and
anthropic SDKs, and Chromium's EventSource and fetch() reader; and ``sseproxy demo --recordings``
serving them through the proxy, with curl commands that send the recorded requests."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import shlex
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import anthropic
import openai
import pytest
from browser import browser_page, require_browser_tools
from helpers import free_port, raw_request
from procs import read_lines_until, run_cli, sseproxy_process

from sseproxy.demo import RECORDINGS
from sseproxy.recording import RecordedRequest, RecordedResponse, Recording, dumps, load_dir, load_file

OPENAI = RECORDINGS / "openai-chat-completions-stream.json"
ANTHROPIC = RECORDINGS / "anthropic-messages-stream.json"
CUT = RECORDINGS / "openai-chat-completions-cut-mid-stream.json"


def events(recording: Recording) -> list[tuple[float, str | None, str]]:
    """Each recorded frame as (t, event name, data)."""
    assert recording.response.frames is not None
    out = []
    for frame in recording.response.frames:
        text = frame.data.decode()
        name = re.search(r"^event: (.*)$", text, re.M)
        data = "\n".join(line[6:] for line in text.splitlines() if line.startswith("data: "))
        out.append((frame.t, name.group(1) if name else None, data))
    return out


def openai_text(recording: Recording) -> str:
    chunks = [json.loads(data) for _, _, data in events(recording) if data != "[DONE]"]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def test_the_shipped_recordings_have_the_shapes_the_docs_promise() -> None:
    names = [name for name, _ in load_dir(RECORDINGS)]
    assert sorted(names) == sorted(p.name for p in (OPENAI, ANTHROPIC, CUT))

    chat = load_file(OPENAI)
    frames = events(chat)
    assert frames[-1][2] == "[DONE]" and chat.response.end == "ok"
    usage = json.loads(frames[-2][2])
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] > 0
    assert openai_text(chat).startswith("Chat UIs stream tokens")

    messages = load_file(ANTHROPIC)
    kinds = [name for _, name, _ in events(messages)]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds.count("content_block_delta") > 5
    assert json.loads(events(messages)[-2][2])["usage"]["output_tokens"] > 0

    assert load_file(CUT).response.end == "error"
    for recording in (chat, messages, load_file(CUT)):
        times = [t for t, _, _ in events(recording)]
        assert times == sorted(times)
        gaps = [b - a for a, b in itertools.pairwise(times) if b - a > 5]  # tokens, not back-to-back frames
        assert 30 <= statistics.median(gaps) <= 80 and max(gaps) < 120, gaps


async def test_the_openai_sdk_streams_a_recorded_chat_completion_with_its_usage_and_timing() -> None:
    recording = load_file(OPENAI)
    request = json.loads(recording.request.body)  # the SDK sends this body again, so replay matches it
    async with sseproxy_process("replay", str(RECORDINGS), "--listen", "127.0.0.1:0") as (_, url):
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        loop = asyncio.get_running_loop()
        sent = loop.time()
        stream = await client.chat.completions.create(**request)
        chunks, arrivals = [], []
        async for chunk in stream:
            chunks.append(chunk)
            arrivals.append((loop.time() - sent) * 1000)
        await client.close()

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == openai_text(recording)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    recorded_usage = json.loads(events(recording)[-2][2])["usage"]
    assert chunks[-1].usage.prompt_tokens == recorded_usage["prompt_tokens"]
    assert chunks[-1].usage.completion_tokens == recorded_usage["completion_tokens"]

    recorded = [t for t, _, data in events(recording) if data != "[DONE]"]  # the SDK yields no [DONE]
    assert len(arrivals) == len(recorded)
    for t, at in zip(recorded, arrivals, strict=True):
        assert t - 5 <= at <= t + 1000, (t, at)  # never early; late only within a generous bound
    lines = [f"{t:7.1f} {at:7.1f} {at - t:+6.1f}" for t, at in zip(recorded, arrivals, strict=True)]
    print("\nrecorded_ms replayed_ms late_ms (openai SDK, --speed 1)\n" + "\n".join(lines), file=sys.stderr)


async def test_the_anthropic_sdk_streams_a_recorded_message_with_its_usage() -> None:
    recording = load_file(ANTHROPIC)
    request = json.loads(recording.request.body)
    deltas = [json.loads(data) for _, name, data in events(recording) if name == "content_block_delta"]
    async with sseproxy_process("replay", str(RECORDINGS), "--listen", "127.0.0.1:0", "--speed", "0") as (_, url):
        client = anthropic.AsyncAnthropic(base_url=url, api_key="unused", max_retries=0)
        stream = await client.messages.create(**request)
        seen = [event async for event in stream]
        await client.close()
    assert [e.type for e in seen if e.type != "ping"] == [name for _, name, _ in events(recording) if name != "ping"]
    assert "".join(e.delta.text for e in seen if e.type == "content_block_delta") == "".join(
        d["delta"]["text"] for d in deltas)
    assert seen[0].message.usage.input_tokens == 21 and seen[-2].usage.output_tokens > 0


async def test_the_openai_sdk_gets_the_tokens_then_an_error_from_a_recording_cut_mid_stream() -> None:
    recording = load_file(CUT)
    request = json.loads(recording.request.body)
    async with sseproxy_process("replay", str(RECORDINGS), "--listen", "127.0.0.1:0", "--speed", "0") as (_, url):
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        text = ""
        with pytest.raises(openai.APIError):
            async for chunk in await client.chat.completions.create(**request):
                text += chunk.choices[0].delta.content or ""
        await client.close()
    assert text == openai_text(recording) and text


PAGE = """<!doctype html><meta charset=utf-8><title>replay</title><body>
<script>
const now = () => performance.now();
const es = new EventSource('/v1/events');
es.onmessage = (e) => { window.report({kind: 'sse', data: e.data, at: now()}); if (e.data === '[DONE]') es.close(); };
es.onerror = () => window.report({kind: 'sse-error', state: es.readyState});
(async () => {
  const r = await fetch('/v1/messages', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: BODY});
  const reader = r.body.getReader(); const dec = new TextDecoder(); let buf = '';
  for (;;) {
    const {value, done} = await reader.read(); if (done) break;
    buf += dec.decode(value, {stream: true}); let i;
    while ((i = buf.indexOf('\\n\\n')) >= 0) {
      window.report({kind: 'fetch', frame: buf.slice(0, i), at: now()}); buf = buf.slice(i + 2);
    }
  }
  window.report({kind: 'fetch-done', rest: buf});
})();
</script>"""


def browser_recordings(directory: Path) -> tuple[Recording, Recording]:
    """The page (a recording too: served by replay, so the streams are same-origin), the shipped
    Anthropic stream for fetch(), and the shipped OpenAI stream as a GET for EventSource."""
    chat, messages = load_file(OPENAI), load_file(ANTHROPIC)
    sse = replace(chat, request=replace(chat.request, method="GET", path="/v1/events", body=b""))
    page = PAGE.replace("BODY", json.dumps(messages.request.body.decode()))
    html = Recording(RecordedRequest("GET", "/", "", (), b""),
                     RecordedResponse(200, (("Content-Type", "text/html; charset=utf-8"),), 0, None, page.encode()))
    directory.mkdir()
    for name, recording in [("page.json", html), ("events.json", sse), ("messages.json", messages)]:
        (directory / name).write_text(dumps(recording))
    return sse, messages


async def test_chromium_reads_recorded_streams_through_replay_with_eventsource_and_fetch(tmp_path: Path) -> None:
    require_browser_tools()
    sse, messages = browser_recordings(tmp_path / "rec")
    want_sse = [data for _, _, data in events(sse)]
    want_fetch = [frame.data.decode().removesuffix("\n\n") for frame in messages.response.frames or ()]
    async with sseproxy_process("replay", str(tmp_path / "rec"), "--listen", "127.0.0.1:0") as (_, url), \
            browser_page(f"{url}/") as page:
        got_sse = [await page.expect(lambda i: i["kind"] == "sse") for _ in want_sse]
        got_fetch = [await page.expect(lambda i: i["kind"] == "fetch") for _ in want_fetch]
        done = await page.expect(lambda i: i["kind"] == "fetch-done")
        assert not any(i["kind"] in ("pageerror", "sse-error", "sse", "fetch") for i in page.seen), page.seen
    assert [i["data"] for i in got_sse] == want_sse
    assert [i["frame"] for i in got_fetch] == want_fetch and done["rest"] == ""
    for got, recording in ((got_sse, sse), (got_fetch, messages)):  # as paced as recorded, not in one batch
        frames = recording.response.frames or ()
        assert got[-1]["at"] - got[0]["at"] >= (frames[-1].t - frames[0].t) * 0.8


async def test_demo_recordings_serves_the_shipped_streams_through_the_proxy() -> None:
    recordings = dict(load_dir(RECORDINGS))
    async with sseproxy_process("demo", "--recordings", "--listen", f"127.0.0.1:{free_port()}") as (proc, url):
        assert proc.stdout is not None
        printed = await read_lines_until(proc.stdout, "Ctrl-C stops.")
        commands = [shlex.split(line) for line in printed if line.strip().startswith("curl ")]
        sent = []
        for command in commands:  # curl -N URL -H 'Content-Type: ...' -d BODY (POST, as -d implies)
            assert command[:2] == ["curl", "-N"] and command[2].startswith(url)
            options = dict(zip(command[3::2], command[4::2], strict=True))
            assert set(options) == {"-H", "-d"}
            sent.append((command[2].removeprefix(url), options["-H"], options["-d"].encode()))
        assert sorted((r.request.path, r.request.body) for r in recordings.values()) == sorted(
            (path, body) for path, _, body in sent)

        chat = recordings[OPENAI.name]
        path, header, body = next(s for s in sent if s[2] == chat.request.body)
        name, value = header.split(": ", 1)
        response = await raw_request(url, "POST", path, {name: value}, body)
        assert response.status == 200 and response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-accel-buffering"] == "no"  # the proxy's, on the way through
        assert await response.body(timeout=10) == b"".join(f.data for f in chat.response.frames or ())
        assert len(response.chunks) > 20  # relayed as it was replayed, event by event


async def test_demo_plays_either_the_mock_or_the_recordings_not_both() -> None:
    code, _, err = await run_cli("demo", "--recordings", "--mock-only")
    assert code == 2 and "not allowed with" in err
