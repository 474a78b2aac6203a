"""Issue 9's defects, each through a running proxy: outcomes in the access log and metrics,
X-Forwarded-For spoofing, CORS method case, access_log vs --log-format, drain that never raises,
a failing prepare(), and `check` printing what the proxy compiled."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from pathlib import Path
from typing import Any

import pytest
from helpers import WAIT, free_port, raw_request, raw_server, read_head, running_app, running_proxy
from procs import read_lines_until, run_cli, sseproxy_process
from test_operations import metric, scrape
from upstreams import echo_app, gated_proxy

from sseproxy.registry import Registry


def access_fields(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.access.fields() for r in caplog.records if r.name == "sseproxy.access"]  # type: ignore[attr-defined]


async def wait_for_lines(caplog: pytest.LogCaptureFixture, count: int) -> list[dict[str, Any]]:
    for _ in range(100):  # bounded: until the requests have ended and been logged
        if len(access_fields(caplog)) >= count:
            break
        await asyncio.sleep(0.05)
    return access_fields(caplog)


async def test_each_way_a_request_ends_is_one_outcome_in_the_log_and_the_metrics(
        caplog: pytest.LogCaptureFixture) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        await asyncio.sleep(WAIT)  # accepts, never answers: 504 after idle

    async with raw_server(silent) as silent_up, running_app(echo_app()) as echo_up, running_proxy({"routes": [
            {"name": "silent", "path": "/silent", "upstream": silent_up, "timeouts": {"idle": "300ms"}},
            {"name": "dead", "path": "/dead", "upstream": f"http://127.0.0.1:{free_port()}"},
            {"name": "echo", "path": "/echo", "upstream": echo_up, "methods": ["GET"]}]}) as (proxy, _):
        with caplog.at_level(logging.INFO, logger="sseproxy.access"):
            assert (await raw_request(proxy, "GET", "/silent", {})).status == 504
            assert (await raw_request(proxy, "GET", "/dead", {})).status == 502
            assert (await raw_request(proxy, "DELETE", "/echo", {})).status == 405
            assert (await raw_request(proxy, "GET", "/nowhere", {})).status == 404
            lines = await wait_for_lines(caplog, 4)
        text = await scrape(proxy)
    assert [(f["route"], f["status"], f["outcome"]) for f in lines] == [
        ("silent", 504, "timeout"), ("dead", 502, "upstream_error"), ("echo", 405, "refused"), (None, 404, "refused")]
    assert metric(text, "sseproxy_requests_total", route="silent", method="GET", status="504", outcome="timeout") == 1
    assert metric(text, "sseproxy_requests_total", route="echo", method="DELETE", status="405",
                  outcome="refused") == 1
    assert metric(text, "sseproxy_upstream_errors_total", route="silent", type="upstream_timeout") == 1
    assert metric(text, "sseproxy_upstream_errors_total", route="echo", type="method_not_allowed") == 0


async def test_a_stream_ended_by_shutdown_is_outcome_shutdown_and_no_upstream_error(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="sseproxy.access"):
        async with gated_proxy(heartbeat=0) as (gate, proxy):
            stream = await raw_request(proxy, "GET", "/", {})
            gate.release(b"data: 1\n\n")
            assert await stream.next_chunk() == b"data: 1\n\n"
        # leaving the block stops the proxy: grace 0.5 s, then the stream is ended
    lines = access_fields(caplog)
    assert [f["outcome"] for f in lines] == ["shutdown"]
    assert lines[0]["error_type"] == "shutdown"


async def forwarded_headers(config: dict[str, Any], headers: dict[str, str]) -> dict[str, str]:
    async with running_app(echo_app()) as up, running_proxy({**config, "routes": [
            {"upstream": up, **config.get("route", {})}]} if "route" not in config else {
            "trusted_proxies": config.get("trusted_proxies", []),
            "routes": [{"upstream": up, **config["route"]}]}) as (proxy, _):
        resp = await raw_request(proxy, "GET", "/", headers)
        info = json.loads(await resp.body())
    return {k.lower(): v for k, v in info["headers"].items()}


SPOOF = {"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https",
         "Forwarded": "for=6.6.6.6"}


async def test_a_clients_own_forwarded_headers_are_dropped() -> None:
    got = await forwarded_headers({}, SPOOF)
    assert got["x-forwarded-for"] == "127.0.0.1"
    assert got["x-forwarded-proto"] == "http" and got["x-forwarded-host"].startswith("127.0.0.1:")
    assert "forwarded" not in got


async def test_a_trusted_proxys_forwarded_for_is_kept_and_appended_to() -> None:
    got = await forwarded_headers({"trusted_proxies": ["127.0.0.0/8"], "route": {}}, SPOOF)
    assert got["x-forwarded-for"] == "6.6.6.6, 127.0.0.1"
    got = await forwarded_headers({"trusted_proxies": ["10.0.0.0/8"], "route": {}}, SPOOF)
    assert got["x-forwarded-for"] == "127.0.0.1"  # loopback is not in that range


async def test_with_forwarded_false_the_clients_headers_pass_untouched() -> None:
    got = await forwarded_headers({"route": {"forwarded": False}}, SPOOF)
    assert got["x-forwarded-for"] == "6.6.6.6" and got["forwarded"] == "for=6.6.6.6"


async def test_cors_methods_are_normalised() -> None:
    cors = {"allow_origins": ["http://app.localhost"], "allow_methods": ["get", "Post"]}
    async with running_app(echo_app()) as up, running_proxy({"cors": cors, "routes": [{"upstream": up}]}) as (proxy, _):
        for method in ("GET", "POST"):
            resp = await raw_request(proxy, "OPTIONS", "/", {"Origin": "http://app.localhost",
                                                            "Access-Control-Request-Method": method})
            assert resp.status == 204, method
            assert resp.headers["access-control-allow-methods"] == "GET, POST"
        resp = await raw_request(proxy, "OPTIONS", "/", {"Origin": "http://app.localhost",
                                                        "Access-Control-Request-Method": "PUT"})
        assert resp.status == 403


async def test_log_format_never_turns_on_an_access_log_the_file_turned_off(tmp_path: Path) -> None:
    async with running_app(echo_app()) as up:
        config = tmp_path / "c.yaml"
        config.write_text(f"access_log: 'off'\nroutes: [{{path: /, upstream: '{up}'}}]\n")
        async with sseproxy_process("serve", "--config", str(config), "--listen", "127.0.0.1:0",
                                    "--log-format", "text") as (proc, url):
            assert (await raw_request(url, "GET", "/x", {})).status == 200
            proc.send_signal(signal.SIGTERM)
            assert proc.stderr is not None
            err = (await asyncio.wait_for(proc.stderr.read(), WAIT * 2)).decode()
    assert '"GET /x"' not in err


async def test_access_log_json_makes_only_access_lines_json_and_a_reload_applies_access_log(tmp_path: Path) -> None:
    async with running_app(echo_app()) as up:
        config = tmp_path / "c.yaml"
        config.write_text(f"access_log: json\nroutes: [{{path: /, upstream: '{up}'}}]\n")
        async with sseproxy_process("serve", "--config", str(config), "--listen", "127.0.0.1:0") as (proc, url):
            assert proc.stderr is not None
            assert (await raw_request(url, "GET", "/first", {})).status == 200
            first = (await read_lines_until(proc.stderr, "/first"))[-1]
            assert json.loads(first)["path"] == "/first"

            config.write_text(f"access_log: text\nroutes: [{{path: /, upstream: '{up}'}}]\n")
            proc.send_signal(signal.SIGHUP)
            reloaded = (await read_lines_until(proc.stderr, "config reloaded"))[-1]
            assert not reloaded.startswith("{")  # the proxy's own lines stay text
            assert (await raw_request(url, "GET", "/second", {})).status == 200
            second = (await read_lines_until(proc.stderr, "/second"))[-1]
            assert '"GET /second"' in second and not second.startswith("{")

            config.write_text(f"access_log: 'off'\nroutes: [{{path: /, upstream: '{up}'}}]\n")
            proc.send_signal(signal.SIGHUP)
            await read_lines_until(proc.stderr, "config reloaded")
            assert (await raw_request(url, "GET", "/third", {})).status == 200
            proc.send_signal(signal.SIGTERM)
            rest = (await asyncio.wait_for(proc.stderr.read(), WAIT * 2)).decode()
    assert "/third" not in rest


class Stubborn:
    """A stream that ignores stop(): shutdown must go on regardless."""

    def __init__(self) -> None:
        self.stopped = 0

    def stop(self) -> None:
        self.stopped += 1


async def test_drain_never_raises_when_a_stream_will_not_stop() -> None:
    registry = Registry()
    stubborn = Stubborn()
    registry.add(stubborn)
    assert await registry.drain(0.05, stop_wait=0.05) == 1
    assert stubborn.stopped == 1


async def test_a_failing_prepare_is_not_logged_ok_and_the_upstream_connection_is_closed(
        caplog: pytest.LogCaptureFixture) -> None:
    upstream_closed = asyncio.Event()

    async def stream_then_wait(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        # aiohttp's client parser takes the \x01 in the reason, its server refuses to send it: prepare() fails.
        writer.write(b"HTTP/1.1 200 O\x01K\r\nContent-Type: text/event-stream\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n9\r\ndata: 1\n\n\r\n")
        await writer.drain()
        if await asyncio.wait_for(reader.read(), WAIT) == b"":
            upstream_closed.set()

    async with raw_server(stream_then_wait) as up, running_proxy({"routes": [
            {"path": "/", "upstream": up}]}) as (proxy, _):
        with caplog.at_level(logging.INFO, logger="sseproxy.access"):
            bad = await raw_request(proxy, "GET", "/bad", {})
            assert bad.status == 500
            lines = await wait_for_lines(caplog, 1)
            await asyncio.wait_for(upstream_closed.wait(), WAIT)  # closed, never handed to the next client
    assert lines[0]["outcome"] == "internal_error"


async def test_check_prints_what_the_proxy_compiled(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("timeouts: {idle: 42s}\nheartbeat: 7s\ncors: {allow_origins: ['http://a.localhost']}\n"
                      "routes:\n  - {path: /a, upstream: 'http://user:hunter2@127.0.0.1:9/v1',"
                      " timeouts: {connect: 3s}}\n"
                      "  - {path: /b, upstream: 'http://127.0.0.1:9', cors: false}\n")
    code, out, _err = await run_cli("check", str(config))
    assert code == 0
    assert "hunter2" not in out and "user@" not in out
    a, b = out.split("[0]")[1].split("[1]")
    assert "connect=3s" in a and "idle=42s" in a and "heartbeat=7s" in a and "cors=on" in a
    assert "connect=10s" in b and "idle=42s" in b and "cors=off" in b
