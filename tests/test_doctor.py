"""``sseproxy doctor`` as a user runs it: a real process against small real upstreams on 127.0.0.1,
each showing one way a stream gets batched. Upstreams pace their events with short sleeps, since
timing is what the doctor measures; the assertions hold on a loaded machine because a batched stream
is held for hundreds of milliseconds while a healthy one never sends more than one event per write."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import ssl
import subprocess
import xml.etree.ElementTree as ET
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import brotli  # type: ignore[import-untyped]
import pytest
from aiohttp import web
from helpers import free_port, raw_server, running_app
from procs import run_cli, sseproxy_process

EVENTS, PACE = 20, 0.03  # a healthy stream: 20 events 30 ms apart, 0.6 s per request
SPEC_KEYS = {"verdict", "causes", "events", "ttfb_ms", "ttfe_ms", "gaps_ms", "max_events_per_read", "headers"}
STREAM_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache, no-transform"}


def event(i: int) -> bytes:
    return f"id: {i}\ndata: {{\"token\": \"t{i}\"}}\n\n".encode()


async def paced(request: web.Request) -> web.StreamResponse:
    """A healthy stream: each event written on its own as it is produced."""
    response = web.StreamResponse(headers=STREAM_HEADERS)
    await response.prepare(request)
    for i in range(EVENTS):
        await asyncio.sleep(PACE)
        await response.write(event(i))
    await response.write_eof()
    return response


async def gzip_when_accepted(request: web.Request) -> web.StreamResponse:
    """The webpack-dev-server ``compress: true`` pattern: gzip when the client accepts it, writing only
    what the compressor gives up, which for small events is nothing until the stream ends."""
    if "gzip" not in request.headers.get("Accept-Encoding", ""):
        return await paced(request)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Content-Encoding": "gzip",
                                           "Cache-Control": "no-cache", "Vary": "Accept-Encoding"})
    await response.prepare(request)
    compressor = zlib.compressobj(wbits=31)
    for i in range(EVENTS):
        await asyncio.sleep(PACE)
        if out := compressor.compress(event(i)):
            await response.write(out)
    await response.write(compressor.flush())
    await response.write_eof()
    return response


async def brotli_flushed(request: web.Request) -> web.StreamResponse:
    """Compressed but flushed after each event: it streams, with a warning."""
    response = web.StreamResponse(headers={**STREAM_HEADERS, "Content-Encoding": "br"})
    await response.prepare(request)
    compressor = brotli.Compressor()
    for i in range(EVENTS):
        await asyncio.sleep(PACE)
        await response.write(compressor.process(event(i)) + compressor.flush())
    await response.write(compressor.finish())
    await response.write_eof()
    return response


async def sized(request: web.Request) -> web.Response:
    """Builds the whole stream, then sends it with a Content-Length."""
    await asyncio.sleep(EVENTS * PACE)
    return web.Response(body=b"".join(event(i) for i in range(EVENTS)), headers=STREAM_HEADERS)


async def idle_then_burst(request: web.Request) -> web.StreamResponse:
    """What a buffering proxy makes of a stream: the headers at once, then every event in one write."""
    response = web.StreamResponse(headers=STREAM_HEADERS)
    await response.prepare(request)
    await asyncio.sleep(EVENTS * PACE)
    await response.write(b"".join(event(i) for i in range(EVENTS)))
    await response.write_eof()
    return response


async def endless(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers=STREAM_HEADERS)
    await response.prepare(request)
    for i in range(10_000):
        await response.write(event(i))
        await asyncio.sleep(PACE)
    return response


async def llm(request: web.Request) -> web.StreamResponse:
    """Streams only for POST with the right key and ``"stream": true``."""
    body = await request.json() if request.can_read_body else {}
    if request.headers.get("Authorization") != "Bearer k" or body != {"stream": True}:
        raise web.HTTPUnauthorized(text=json.dumps({"error": "no"}), content_type="application/json")
    return await paced(request)


async def as_json(request: web.Request) -> web.Response:
    return web.json_response({"answer": 42})


def upstream_app() -> web.Application:
    app = web.Application()
    for path, handler in {"/events": paced, "/gzip": gzip_when_accepted, "/br": brotli_flushed, "/sized": sized,
                          "/burst": idle_then_burst, "/endless": endless, "/json": as_json}.items():
        app.router.add_get(path, handler)
    app.router.add_post("/v1/chat", llm)
    return app


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    async with running_app(upstream_app()) as url:
        yield url


async def doctor(*args: str) -> tuple[int, dict[str, Any], str]:
    code, out, err = await run_cli("doctor", "--timeout", "10s", "--json", *args)
    return code, json.loads(out), err


def codes(report: dict[str, Any], severity: str | None = None) -> list[str]:
    return [c["code"] for c in report["causes"] if severity is None or c["severity"] == severity]


async def test_a_healthy_stream_streams_exit_0_with_every_event_counted(upstream: str) -> None:
    code, report, _ = await doctor(f"{upstream}/events")
    assert (code, report["verdict"]) == (0, "streams"), report["causes"]
    assert set(report) >= SPEC_KEYS and set(report["gaps_ms"]) == {"p50", "p99", "max"}
    assert report["events"] == EVENTS and report["identity"]["events"] == EVENTS
    assert report["max_events_per_read"] < EVENTS // 2
    assert report["gaps_ms"]["p50"] >= PACE * 1000 * 0.5
    assert report["ttfe_ms"] >= report["ttfb_ms"]
    assert report["headers"]["content-type"] == "text/event-stream"
    assert codes(report, "problem") == []


async def test_gzip_that_holds_the_stream_is_buffered_by_compression(upstream: str) -> None:
    code, report, _ = await doctor(f"{upstream}/gzip")
    assert (code, report["verdict"]) == (1, "buffered")
    assert codes(report, "problem") == ["compression"]
    assert "no_transform_missing" in codes(report, "warning")
    cause = report["causes"][0]
    assert "Content-Encoding: gzip" in cause["message"] and "only when compression is accepted" in cause["message"]
    assert "webpack-dev-server" in cause["fix"] and "sseproxy" in cause["fix"]
    assert report["events"] == EVENTS and report["max_events_per_read"] >= EVENTS // 2
    assert report["identity"]["events"] == EVENTS and report["identity"]["max_events_per_read"] < EVENTS // 2


async def test_the_same_gzip_server_streams_through_sseproxy(upstream: str) -> None:
    async with sseproxy_process("serve", "--listen", "127.0.0.1:0", "--route", f"/={upstream}") as (_, proxy):
        code, report, _ = await doctor(f"{proxy}/gzip")
    assert (code, report["verdict"]) == (0, "streams"), report["causes"]
    assert report["events"] == EVENTS and report["max_events_per_read"] < EVENTS // 2
    assert "content-encoding" not in report["headers"]
    assert "no-transform" in report["headers"]["cache-control"]


async def test_a_compressed_stream_flushed_per_event_streams_with_a_warning(upstream: str) -> None:
    code, report, _ = await doctor(f"{upstream}/br")
    assert (code, report["verdict"]) == (0, "streams"), report["causes"]
    assert codes(report) == ["content_encoding"] and report["events"] == EVENTS
    assert report["headers"]["content-encoding"] == "br"


async def test_content_length_on_a_stream_is_buffered(upstream: str) -> None:
    code, report, _ = await doctor(f"{upstream}/sized")
    assert (code, report["verdict"]) == (1, "buffered")
    assert codes(report, "problem") == ["content_length"] and "content-length" in report["headers"]
    assert report["events"] == EVENTS


async def test_an_idle_start_then_a_burst_is_a_buffering_intermediary(upstream: str) -> None:
    code, report, _ = await doctor(f"{upstream}/burst")
    assert (code, report["verdict"]) == (1, "buffered")
    assert codes(report, "problem") == ["buffering_intermediary"]
    assert "proxy_buffering" in report["causes"][0]["fix"]
    assert report["ttfe_ms"] - report["ttfb_ms"] >= EVENTS * PACE * 1000 * 0.8  # the idle start


async def test_an_endless_stream_is_judged_on_what_arrived_before_the_timeout(upstream: str) -> None:
    code, out, _ = await run_cli("doctor", "--timeout", "1s", "--json", f"{upstream}/endless")
    report = json.loads(out)
    assert (code, report["verdict"]) == (0, "streams") and report["ended"] == "timeout"
    assert 5 <= report["events"] <= 1 / PACE + 2


async def test_json_is_not_a_stream_exit_1(upstream: str) -> None:
    code, report, _ = await doctor(f"{upstream}/json")
    assert (code, report["verdict"], codes(report)) == (1, "not_a_stream", ["not_a_stream"])
    assert report["identity"] is None  # not a stream: no second request


async def test_method_body_and_headers_are_sent_as_given(upstream: str) -> None:
    code, report, _ = await doctor("-X", "post", "-H", "Authorization: Bearer k", "-d", '{"stream": true}',
                                   f"{upstream}/v1/chat")
    assert (code, report["verdict"], report["method"]) == (0, "streams", "POST")
    code, report, _ = await doctor("-d", '{"stream": true}', f"{upstream}/v1/chat")  # -d alone means POST
    assert (code, report["verdict"], codes(report)) == (2, "error", ["http_error"])
    assert "401" in report["causes"][0]["message"]


async def test_the_report_and_the_plot_show_the_verdict_each_event_and_the_fix(upstream: str, tmp_path: Path) -> None:
    target = tmp_path / "arrivals.svg"
    code, out, err = await run_cli("doctor", "--timeout", "10s", "--plot", str(target), f"{upstream}/gzip")
    assert code == 1 and err == ""
    assert "BUFFERED" in out and "\x1b[" not in out  # no colour off a TTY
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith("arrivals over"))
    browser, identity = (line.split(None, 1 if "identity" in line else 3)[-1] for line in lines[at + 1:at + 3])
    assert browser.replace("·", "").replace("H", "") == "#"  # the whole batch in one mark
    assert identity.count("|") + sum(int(c) for c in identity if c.isdigit()) == EVENTS  # one mark per event
    assert "compression" in out and "fix: " in out
    root = ET.parse(target).getroot()  # the plot: one mark per event, and the reads
    ns = "{http://www.w3.org/2000/svg}"
    marks = root.findall(f".//{ns}circle[@class='event']")
    assert len([m for m in marks if m.get("data-run") == "browser"]) == EVENTS
    assert len([m for m in marks if m.get("data-run") == "identity"]) == EVENTS
    assert root.findall(f".//{ns}line[@class='read']")


async def test_a_refused_port_exits_2_with_one_line() -> None:
    port = free_port()
    code, out, err = await run_cli("doctor", f"http://127.0.0.1:{port}/events")
    assert code == 2 and out == ""
    assert err.splitlines() == [f"sseproxy doctor: cannot connect to 127.0.0.1:{port}: Connection refused"]
    code, out, _ = await run_cli("doctor", "--json", f"http://127.0.0.1:{port}/events")
    report = json.loads(out)
    assert (code, report["verdict"], codes(report)) == (2, "error", ["connect_failed"])


@pytest.mark.parametrize("args", [
    [],
    ["ftp://127.0.0.1/x"],
    ["http://127.0.0.1:1/", "-H", "no colon"],
    ["http://127.0.0.1:1/", "--timeout", "forever"],
    ["http://127.0.0.1:1/", "-d", "@/nonexistent/body.json"],
])
async def test_bad_flags_exit_2(args: list[str]) -> None:
    code, out, err = await run_cli("doctor", *args)
    assert code == 2 and out == "" and err


async def test_a_silent_server_times_out_with_exit_2() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the doctor gives up and hangs up

    async with raw_server(silent) as url:
        code, _, err = await run_cli("doctor", "--timeout", "300ms", f"{url}/")
    assert code == 2 and "no response within 0.3s" in err


@contextlib.asynccontextmanager
async def tls_upstream(tmp_path: Path) -> AsyncIterator[str]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    runner = web.AppRunner(upstream_app(), access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    try:
        yield f"https://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
async def test_https_with_verification_and_with_k(tmp_path: Path) -> None:
    async with tls_upstream(tmp_path) as url:
        code, out, err = await run_cli("doctor", "--timeout", "10s", f"{url}/events")
        assert code == 2 and out == "" and "self-signed certificate (-k skips verification)" in err
        await asyncio.sleep(0.2)
        code, report, _ = await doctor("-k", f"{url}/gzip")
    assert (code, report["verdict"], codes(report, "problem")) == (1, "buffered", ["compression"])
