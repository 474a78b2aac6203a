"""``sseproxy demo --resume`` as a user runs it: the real process on a free port. The curl commands it
prints (run here with aiohttp, exactly as printed) start an answer, hang up after 3 events and pick up
with ``Last-Event-ID``; and its page, in headless Chromium, loses its stream to the demo's relay once
mid-answer, reconnects by itself and shows every token exactly once."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import signal

import aiohttp
from browser import browser_page, require_browser_tools
from helpers import WAIT, free_port
from procs import read_lines_until, run_cli, sseproxy_process

from sseproxy import demo
from sseproxy.demo_resume import ANSWER, CUT_AFTER, Link

TOKENS = demo.tokens(ANSWER.text)
EVENTS = len(TOKENS) + 2  # the tokens, the chunk with finish_reason, and [DONE]
READ = aiohttp.ClientTimeout(sock_read=WAIT * 2)


def curl(command: str) -> tuple[str, dict[str, str], str | None]:
    """The URL, headers and body of a printed ``curl -N -i URL -H ... [-d ...]``."""
    argv = shlex.split(command)
    assert argv[:3] == ["curl", "-N", "-i"], argv
    headers = dict(argv[i + 1].split(": ", 1) for i, a in enumerate(argv) if a == "-H")
    data = next((argv[i + 1] for i, a in enumerate(argv) if a == "-d"), None)
    return argv[3], headers, data


def parse(event: bytes) -> tuple[str, str]:
    """``(data, id)`` of one event the proxy numbered."""
    fields = dict(line.split(": ", 1) for line in event.decode().split("\n"))
    return fields["data"], fields["id"]


def content(data: str) -> str:
    return str(json.loads(data)["choices"][0]["delta"].get("content", ""))


async def printed(proc: asyncio.subprocess.Process) -> list[str]:
    """The demo's instructions, after its ready line."""
    assert proc.stdout is not None
    return [line.strip() for line in await read_lines_until(proc.stdout, "Ctrl-C stops")]


async def metrics(proxy: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(f"{proxy}/_sseproxy/metrics", timeout=READ) as r:
        return await r.text()


async def test_printed_curls_hang_up_after_3_events_and_pick_up_with_last_event_id() -> None:
    async with sseproxy_process("demo", "--resume", "--listen", f"127.0.0.1:{free_port()}") as (proc, proxy):
        start, resume = [curl(line) for line in await printed(proc) if line.startswith("curl ")]
        url, headers, body = start
        assert url == f"{proxy}/v1/chat/completions" and body is not None
        async with aiohttp.ClientSession() as session:
            async with session.post(url, data=body.encode(), headers=headers, timeout=READ) as r:
                assert r.status == 200
                sid = r.headers["Sseproxy-Stream-Id"]
                first = [parse((await r.content.readuntil(b"\n\n")).rstrip(b"\n")) for _ in range(3)]
                r.close()  # Ctrl-C: the connection is gone, the answer goes on into the store
            assert [i for _, i in first] == [f"{sid}.{n}" for n in (1, 2, 3)]

            url, headers, body = resume
            assert url == f"{proxy}/v1/chat/completions" and body is None  # a GET: the method does not matter
            assert headers == {"Last-Event-ID": "<stream-id>.<n>"}
            async with session.get(url, headers={"Last-Event-ID": f"{sid}.3"}, timeout=READ) as r:
                assert r.status == 200 and r.headers["Sseproxy-Stream-Id"] == sid
                rest = [parse(e) for e in (await r.read()).split(b"\n\n") if e]  # a truncated end would raise
            assert [i for _, i in rest] == [f"{sid}.{n}" for n in range(4, EVENTS + 1)]  # each once, in order
            assert rest[-1][0] == "[DONE]"
            assert "".join(content(d) for d, _ in first + rest[:-1]) == ANSWER.text

            async with session.get(url, headers={"Last-Event-ID": f"{sid}.{EVENTS}"}, timeout=READ) as r:
                assert r.status == 204  # all delivered
        seen = await metrics(proxy)
        assert 'sseproxy_resumes_total{result="ok",route="/"} 1.0' in seen
        assert 'sseproxy_resumes_total{result="done",route="/"} 1.0' in seen


async def test_page_loses_its_stream_once_reconnects_by_itself_and_shows_every_token_once() -> None:
    require_browser_tools()
    async with sseproxy_process("demo", "--resume", "--listen", f"127.0.0.1:{free_port()}") as (proc, proxy):
        lines = await printed(proc)
        page_url = next(m.group(1) for line in lines if (m := re.search(r"open (\S+) in a browser", line)))
        async with browser_page(page_url) as page:
            await page.command(click="#go")
            await page.wait_for(f"document.getElementById('out').textContent === {json.dumps(ANSWER.text)}",
                                timeout=30)
            done = await page.expect(lambda i: i["kind"] == "console" and i["text"].startswith("resume: done:"))
            assert done["text"] == f"resume: done: {EVENTS} events, each exactly once"
            notes = [item["text"].removeprefix("resume: ") for item in page.seen
                     if item["kind"] == "console" and item["text"].startswith("resume: ")]  # the page's log
        assert notes[0] == f"connection lost after event {CUT_AFTER}; EventSource reconnects by itself", notes
        assert re.fullmatch(rf"reconnected with Last-Event-ID [\w-]+\.{CUT_AFTER}: the proxy resumed at event "
                            rf"{CUT_AFTER + 1} from its store", notes[1]), notes
        assert len(notes) == 2  # no event lost, repeated or out of order; one drop, one reconnect
        seen = await metrics(proxy)
        assert 'sseproxy_resumes_total{result="ok",route="/"} 1.0' in seen  # the page's reconnect

        proc.send_signal(signal.SIGTERM)
        assert proc.stdout is not None
        rest = (await asyncio.wait_for(proc.stdout.read(), WAIT * 2)).decode()
    assert rest.count("relay: dropped") == 1, rest
    assert f"relay: dropped the page's stream after event {CUT_AFTER};" in rest


def test_relay_cuts_where_the_nth_numbered_event_ends_even_across_reads() -> None:
    link = Link(after=2)
    event = b"data: x\nid: abcdefghijklmnopqrstuvwxyz.%d\n\n"
    stream = b"HTTP/1.1 200 OK\r\n\r\n1f\r\n" + event % 1 + b"\r\n1f\r\n" + event % 2 + b"\r\n" + event % 3
    end_of_2 = stream.index(event % 2) + len(event % 2)
    reads = [stream[i:i + 7] for i in range(0, len(stream), 7)]  # every event split across reads
    offset = 0
    for data in reads:
        cut = link.cut_point(data)
        if cut is not None:
            assert offset + cut == end_of_2 and link.events == 2
            break
        offset += len(data)
    else:
        raise AssertionError("never cut")


def test_relay_lets_a_resume_through_whole() -> None:
    link = Link(after=1)
    link.saw_request(b"GET /v1/chat/stream HTTP/1.1\r\nLast-Event")
    link.saw_request(b"-ID: abc.8\r\n\r\n")
    assert link.resuming
    assert link.cut_point(b"data: x\nid: abc.9\n\ndata: y\nid: abc.10\n\n") is None and link.events == 2


async def test_demo_resume_is_one_choice_of_upstream() -> None:
    code, _, err = await run_cli("demo", "--resume", "--recordings")
    assert code == 2 and "not allowed with argument" in err
