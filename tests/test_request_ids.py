"""Request ids and the tap's options, through a running proxy and the CLI as a process; and a CORS
preflight's access-log line and metrics, which say 204."""

from __future__ import annotations

import asyncio
import json
import logging
import re

import pytest
from helpers import WAIT, Gate, raw_request, running_app, running_proxy
from procs import sseproxy_process
from test_operations import metric, scrape
from upstreams import echo_app, gated_stream_app

HEX32 = re.compile(r"[0-9a-f]{32}")


def access_fields(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [r.access.fields() for r in caplog.records if r.name == "sseproxy.access"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("sent", [None, "client-id-42", "has spaces in it", "x" * 200])
async def test_the_request_id_goes_upstream_back_to_the_client_and_into_the_access_log(
        sent: str | None, caplog: pytest.LogCaptureFixture) -> None:
    async with running_app(echo_app()) as up, running_proxy({"routes": [{"upstream": up}]}) as (proxy, _):
        with caplog.at_level(logging.INFO, logger="sseproxy.access"):
            resp = await raw_request(proxy, "GET", "/x", {"X-Request-Id": sent} if sent else {})
            seen = json.loads(await resp.body())["headers"]
    rid = resp.headers["x-request-id"]
    if sent == "client-id-42":
        assert rid == sent  # the client's own id is kept
    else:
        assert HEX32.fullmatch(rid)  # none, or one unfit for a log line: a new uuid4 hex
    assert {k.lower(): v for k, v in seen.items()}["x-request-id"] == rid
    assert [f["request_id"] for f in access_fields(caplog)] == [rid]


async def test_a_refused_request_returns_and_logs_its_request_id(caplog: pytest.LogCaptureFixture) -> None:
    async with running_proxy({"routes": [{"path": "/api", "upstream": "http://127.0.0.1:1"}]}) as (proxy, _):
        with caplog.at_level(logging.INFO, logger="sseproxy.access"):
            resp = await raw_request(proxy, "GET", "/nowhere", {"X-Request-Id": "r-404"})
            await resp.body()
    assert resp.status == 404 and resp.headers["x-request-id"] == "r-404"
    assert access_fields(caplog)[0]["request_id"] == "r-404"


async def test_a_cors_preflight_is_logged_and_counted_as_204(caplog: pytest.LogCaptureFixture) -> None:
    config = {"cors": {"allow_origins": ["http://localhost:5173"]},
              "routes": [{"name": "api", "upstream": "http://127.0.0.1:1"}]}
    async with running_proxy(config) as (proxy, _):
        with caplog.at_level(logging.INFO, logger="sseproxy.access"):
            resp = await raw_request(proxy, "OPTIONS", "/chat", {"Origin": "http://localhost:5173",
                                                                 "Access-Control-Request-Method": "POST"})
        assert resp.status == 204
        text = await scrape(proxy)
    assert [(f["status"], f["outcome"]) for f in access_fields(caplog) if f["route"] == "api"] == [(204, "ok")]
    assert metric(text, "sseproxy_requests_total", route="api", method="OPTIONS", status="204", outcome="ok") == 1
    assert 'status="0"' not in text


async def read_tap_line(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    return (await asyncio.wait_for(proc.stdout.readline(), WAIT)).decode().rstrip("\n")


async def test_every_tap_line_carries_the_request_id_and_the_tap_options_apply() -> None:
    gate, other = Gate(), Gate()
    token = '{"choices": [{"delta": {"content": " world"}}], "pad": "%s"}' % ("p" * 300)
    async with running_app(gated_stream_app(gate, "text/event-stream")) as chat_up, \
            running_app(gated_stream_app(other, "application/x-ndjson")) as other_up, sseproxy_process(
            "serve", "--listen", "127.0.0.1:0", "--route", f"/chat={chat_up}", "--route", f"/other={other_up}",
            "--tap-route", "/chat", "--tap-field", "choices.0.delta.content", "--tap-width", "100") as (proc, url):
        quiet = await raw_request(url, "GET", "/other", {})
        other.release(b'{"not": "shown"}\n')  # a route --tap-route leaves out: relayed, not printed
        assert await quiet.next_chunk() == b'{"not": "shown"}\n'
        stream = await raw_request(url, "GET", "/chat", {"X-Request-Id": "tap-req-7"})
        gate.release(f"data: {token}\n\n".encode())
        await stream.next_chunk()
        line = await read_tap_line(proc)
        size = len(f"data: {token}")  # the event without its blank line
        assert " tap-req-7 /chat #" in line and line.endswith(f' message {size}B " world"'), line
        gate.release(b"data: [DONE]\n\n")  # no such field: shown as -
        await stream.next_chunk()
        assert (await read_tap_line(proc)).endswith(" message 12B -")
        gate.release(None)
        other.release(None)


async def test_tap_width_bounds_every_line() -> None:
    gate = Gate()
    async with running_app(gated_stream_app(gate, "text/event-stream")) as up, sseproxy_process(
            "serve", "--tap", "--tap-width", "80", "--listen", "127.0.0.1:0", "--route", f"/={up}") as (proc, url):
        stream = await raw_request(url, "GET", "/", {})
        gate.release(b"data: " + b"y" * 1000 + b"\n\n")
        await stream.next_chunk()
        line = await read_tap_line(proc)
        gate.release(None)
    assert len(line) == 80 and line.endswith("yyy…") and HEX32.search(line)  # a request id the proxy made
