"""Operations: metrics after known traffic, access-log outcomes, --tap, reload under a live stream,
graceful shutdown with a stream in flight."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import signal
from pathlib import Path

import pytest
from helpers import WAIT, Gate, Truncated, free_port, raw_request, running_app, running_listener, running_proxy
from procs import read_lines_until, sseproxy_process
from upstreams import echo_app, gated_proxy, gated_stream_app

from sseproxy.tap import Tap


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text, or 0 if absent."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        sample, value = line.rsplit(" ", 1)
        found = dict(pair.split("=", 1) for pair in sample[len(name) + 1:-1].split(","))
        if {k: v.strip('"') for k, v in found.items()} == labels:
            return float(value)
    return 0.0


async def scrape(proxy: str) -> str:
    resp = await raw_request(proxy, "GET", "/_sseproxy/metrics", {})
    assert resp.status == 200 and resp.headers["content-type"].startswith("text/plain")
    return (await resp.body()).decode()


async def test_metrics_after_known_traffic() -> None:
    gate = Gate()
    async with running_app(gated_stream_app(gate, "text/event-stream")) as stream_up, \
            running_app(echo_app()) as echo_up, running_proxy({"routes": [
                {"name": "chat", "path": "/chat", "upstream": stream_up},
                {"name": "echo", "path": "/echo", "upstream": echo_up},
                {"name": "dead", "path": "/dead", "upstream": f"http://127.0.0.1:{free_port()}"}]}) as (proxy, _):
        for _ in range(3):
            assert (await raw_request(proxy, "GET", "/echo/x", {})).status == 200
        assert (await raw_request(proxy, "GET", "/dead", {})).status == 502
        stream = await raw_request(proxy, "GET", "/chat", {})
        gate.release(b"data: 1\n\ndata: 2\n\n")
        assert await stream.next_chunk() == b"data: 1\n\ndata: 2\n\n"
        during = await scrape(proxy)
        assert metric(during, "sseproxy_active_streams", route="chat") == 1
        gate.release(b"data: 3\n\n")
        await stream.next_chunk()
        gate.release(None)
        assert await stream.next_chunk() is None
        hangup = await raw_request(proxy, "GET", "/chat", {})
        hangup.writer.transport.abort()
        for _ in range(100):  # bounded: until the hang-up has been counted
            after = await scrape(proxy)
            if metric(after, "sseproxy_client_hangups_total", route="chat") == 1:
                break
            await asyncio.sleep(0.05)
        gate.release(None)
    assert metric(after, "sseproxy_requests_total", route="echo", method="GET", status="200", outcome="ok") == 3
    assert metric(after, "sseproxy_requests_total", route="dead", method="GET", status="502",
                  outcome="upstream_error") == 1
    assert metric(after, "sseproxy_requests_total", route="chat", method="GET", status="200",
                  outcome="client_closed") == 1
    assert metric(after, "sseproxy_upstream_errors_total", route="dead", type="upstream_unavailable") == 1
    assert metric(after, "sseproxy_events_relayed_total", route="chat") == 3
    assert metric(after, "sseproxy_active_streams", route="chat") == 0  # back to zero
    assert metric(after, "sseproxy_time_to_first_event_seconds_count", route="chat") == 1
    assert metric(after, "sseproxy_time_to_first_byte_seconds_count", route="echo") == 3
    assert metric(after, "sseproxy_client_hangups_total", route="chat") == 1


async def test_health_answers_503_while_draining() -> None:
    async with running_app(echo_app()) as up, running_proxy({"routes": [{"upstream": up}]}) as (proxy, runtime):
        assert (await raw_request(proxy, "GET", "/_sseproxy/health", {})).status == 200
        runtime.draining = True
        resp = await raw_request(proxy, "GET", "/_sseproxy/health", {})
        assert resp.status == 503 and json.loads(await resp.body()) == {"status": "draining"}
        runtime.draining = False


async def test_shutdown_sets_draining_before_it_waits_for_streams() -> None:
    gate = Gate()
    async with running_app(gated_stream_app(gate, "text/event-stream")) as up, running_listener(
            {"shutdown_grace": 5, "routes": [{"upstream": up}]}) as (proxy, listener):
        stream = await raw_request(proxy, "GET", "/live", {})
        gate.release(b"data: 1\n\n")
        assert await stream.next_chunk() == b"data: 1\n\n"
        assert not listener.runtime.draining
        stopping = asyncio.create_task(listener.stop())
        for _ in range(100):  # bounded: until shutdown has begun
            if listener.runtime.draining:
                break
            await asyncio.sleep(0.02)
        assert listener.runtime.draining and not stopping.done()  # draining while the stream still runs
        gate.release(b"data: 2\n\n")
        assert await stream.next_chunk() == b"data: 2\n\n"  # streams in flight carry on
        gate.release(None)
        assert await stream.next_chunk() is None
        await asyncio.wait_for(stopping, WAIT)


@pytest.mark.parametrize("case", ["ok", "client_closed", "upstream_error", "timeout"])
async def test_one_access_log_line_per_request_with_its_outcome(case: str, caplog: pytest.LogCaptureFixture) -> None:
    async with gated_proxy(timeouts={"idle": "200ms"}, heartbeat=0) as (gate, proxy):
        with caplog.at_level(logging.INFO, logger="sseproxy.access"):
            resp = await raw_request(proxy, "GET", "/stream?secret=1", {})
            gate.release(b"data: 1\n\n")
            await resp.next_chunk()
            if case == "ok":
                gate.release(None)
                assert await resp.next_chunk() is None
            elif case == "client_closed":
                resp.writer.transport.abort()
            elif case == "upstream_error":
                gate.release(b"ABORT")  # the upstream resets its connection mid-stream
            for _ in range(100):  # bounded: until the request has ended and been logged
                lines = [r for r in caplog.records if r.name == "sseproxy.access"]
                if lines:
                    break
                await asyncio.sleep(0.05)
            gate.release(None)
    assert len(lines) == 1
    fields = lines[0].access.fields()  # type: ignore[attr-defined]
    assert fields["outcome"] == case
    assert fields["path"] == "/stream" and "secret" not in lines[0].getMessage()  # no query in the log
    assert fields["status"] == 200 and fields["events"] >= 1 and fields["ttfb"] is not None
    assert fields["ttfe"] is not None and fields["total"] >= fields["ttfb"]


def test_tap_prints_one_line_per_event() -> None:
    out = io.StringIO()
    Tap(out, color=False).frames("chat", 7, b"event: delta\ndata: hello\n\n: comment\n\ndata: {\"a\": 1}\n\n", sse=True)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith(" chat #7 delta 24B hello")
    assert lines[1].endswith('chat #7 message 14B {"a": 1}')


async def test_tap_through_a_running_proxy(tmp_path: Path) -> None:
    gate = Gate()
    async with running_app(gated_stream_app(gate, "text/event-stream")) as up, sseproxy_process(
            "serve", "--tap", "--listen", "127.0.0.1:0", "--route", f"/={up}") as (proc, url):
        stream = await raw_request(url, "GET", "/", {})
        gate.release(b"event: token\ndata: first\n\n")
        assert await stream.next_chunk() == b"event: token\ndata: first\n\n"
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), WAIT)).decode()
        assert " / #1 token " in line and line.rstrip().endswith("first")
        assert "\x1b[" not in line  # no colour when stdout is not a terminal
        gate.release(None)


async def test_reload_keeps_live_streams_and_applies_to_new_requests(tmp_path: Path) -> None:
    gate = Gate()
    async with running_app(gated_stream_app(gate, "text/event-stream")) as stream_up, \
            running_app(echo_app()) as echo_up:
        config = tmp_path / "live.yaml"
        config.write_text(f"routes:\n  - {{path: /old, upstream: '{stream_up}'}}\n")
        async with sseproxy_process("serve", "--config", str(config), "--listen", "127.0.0.1:0", "--watch"
                                    ) as (proc, url):
            stream = await raw_request(url, "GET", "/old", {})
            gate.release(b"data: before\n\n")
            assert await stream.next_chunk() == b"data: before\n\n"

            config.write_text(f"routes:\n  - {{path: /new, upstream: '{echo_up}'}}\n")  # --watch picks it up
            for _ in range(100):  # bounded: until the new route answers
                resp = await raw_request(url, "GET", "/new/x", {})
                if resp.status == 200:
                    break
                await asyncio.sleep(0.05)
            assert json.loads(await resp.body())["path"] == "/x"
            assert (await raw_request(url, "GET", "/old", {})).status == 404  # new requests: new config

            config.write_text("routes:\n  - {path: /broken, upstream: 'htp://x'}\n")
            proc.send_signal(signal.SIGHUP)  # an invalid reload is logged; the old config stays
            assert proc.stderr is not None
            failed = "".join(await read_lines_until(proc.stderr, "reload failed, keeping the old config", limit=500))
            assert (await raw_request(url, "GET", "/new/y", {})).status == 200

            gate.release(b"data: after\n\n")  # the stream in flight carried on on its old route
            assert await stream.next_chunk() == b"data: after\n\n"
            gate.release(None)
            assert await stream.next_chunk() is None
            metrics = (await (await raw_request(url, "GET", "/_sseproxy/metrics", {})).body()).decode()
            assert metric(metrics, "sseproxy_config_reloads_total", result="failed") >= 1
        assert proc.stderr is not None
        log = failed + (await proc.stderr.read()).decode()
        assert "'htp://x' is not an http(s) URL" in log


async def test_sigterm_ends_a_live_stream_with_a_shutdown_event_and_exits_0(tmp_path: Path) -> None:
    gate = Gate()
    config = tmp_path / "grace.yaml"
    async with running_app(gated_stream_app(gate, "text/event-stream")) as up:
        config.write_text(f"shutdown_grace: 500ms\nroutes:\n  - {{upstream: '{up}', heartbeat: 0}}\n")
        async with sseproxy_process("serve", "--config", str(config), "--listen", "127.0.0.1:0") as (proc, url):
            stream = await raw_request(url, "GET", "/", {})
            gate.release(b"data: one\n\ndata: half")
            assert await stream.next_chunk() == b"data: one\n\n"
            loop = asyncio.get_running_loop()
            started = loop.time()
            proc.send_signal(signal.SIGTERM)
            frame = await stream.next_chunk()
            assert frame.startswith(b"event: error\ndata: ") and b'"type": "shutdown"' in frame  # never mid-event
            with pytest.raises(Truncated):
                await stream.next_chunk()
            assert await asyncio.wait_for(proc.wait(), WAIT) == 0
            assert loop.time() - started < WAIT
            gate.release(None)


async def test_a_reload_closes_dropped_upstream_pools_once_their_last_stream_ends() -> None:
    from yarl import URL

    from sseproxy.config import Config
    from sseproxy.h1pool import address
    from sseproxy.runtime import compile_config

    gate = Gate()
    async with running_app(gated_stream_app(gate, "text/event-stream")) as old_up, \
            running_app(echo_app()) as new_up, \
            running_proxy({"routes": [{"upstream": old_up}]}) as (proxy, runtime):
        old, new = address(URL(old_up)), address(URL(new_up))  # plain-http upstreams: the lean pools
        stream = await raw_request(proxy, "GET", "/", {})
        gate.release(b"data: 1\n\n")
        assert await stream.next_chunk() == b"data: 1\n\n"
        runtime.swap(compile_config(Config.model_validate({"listen": "127.0.0.1:0", "routes": [{"upstream": new_up}]})))
        assert (await raw_request(proxy, "GET", "/x", {})).status == 200  # new requests: the new upstream
        assert runtime.h1.addresses() == {old, new}  # the old pool stays while its stream runs
        gate.release(b"data: 2\n\n")
        assert await stream.next_chunk() == b"data: 2\n\n"
        gate.release(None)
        assert await stream.next_chunk() is None
        for _ in range(100):  # bounded: until the handler has finished and let go of the old snapshot
            if runtime.h1.addresses() == {new}:
                break
            await asyncio.sleep(0.05)
        assert runtime.h1.addresses() == {new}


async def test_two_workers_both_serve_one_port_and_metrics_count_both() -> None:
    gate = Gate()
    async with running_app(echo_app()) as echo_up, \
            running_app(gated_stream_app(gate, "text/event-stream")) as stream_up, \
            sseproxy_process("serve", "--workers", "2", "--listen", "127.0.0.1:0", "--log-format", "json",
                             "--route", f"/api={echo_up}", "--route", f"/={stream_up}") as (proc, url):
        for i in range(40):  # each on a new connection: the kernel spreads them over both workers
            resp = await raw_request(url, "GET", f"/api/{i}", {})
            assert resp.status == 200
            resp.close()
        for _ in range(100):  # bounded: until every request has been counted (after its response)
            text = await scrape(url)
            if metric(text, "sseproxy_requests_total", route="/api", method="GET", status="200", outcome="ok") == 40:
                break
            await asyncio.sleep(0.05)
        assert metric(text, "sseproxy_requests_total", route="/api", method="GET", status="200", outcome="ok") == 40
        stream = await raw_request(url, "GET", "/live", {})
        gate.release(b"data: 1\n\n")
        assert await stream.next_chunk() == b"data: 1\n\n"
        for _ in range(100):  # bounded: the relaying worker hands its count on at its sweep, or at a scrape
            text = await scrape(url)  # answered by either worker
            if metric(text, "sseproxy_events_relayed_total", route="/") == 1:
                break
            await asyncio.sleep(0.05)
        assert metric(text, "sseproxy_events_relayed_total", route="/") == 1  # the stream is still open
        proc.send_signal(signal.SIGTERM)  # forwarded to both workers; the live stream may finish
        gate.release(None)
        assert await stream.next_chunk() is None
        assert await asyncio.wait_for(proc.wait(), WAIT * 2) == 0
        assert proc.stderr is not None
        log = (await proc.stderr.read()).decode()
    pids = {json.loads(line)["pid"] for line in log.splitlines()
            if line.startswith("{") and json.loads(line).get("path", "").startswith("/api/")}
    assert len(pids) == 2
