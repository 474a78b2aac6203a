"""Metrics a dashboard can use: counters that move while a stream runs, series from the start, no
``_created`` series, scrapes not counted, and histograms of gaps between events and stream duration."""

from __future__ import annotations

import asyncio

from helpers import Gate, raw_request, running_app, running_proxy
from test_operations import metric, scrape
from upstreams import echo_app, gated_stream_app

EVENT = b"data: " + b"x" * 20 + b"\n\n"


def present(text: str, name: str, **labels: str) -> bool:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return any(line.startswith(f"{name}{{{wanted}}} ") for line in text.splitlines())


async def test_events_and_bytes_are_counted_while_a_stream_runs_and_exactly_once() -> None:
    gate = Gate()
    async with running_app(gated_stream_app(gate, "text/event-stream")) as up, running_proxy(
            {"heartbeat": 0, "routes": [{"name": "chat", "upstream": up}]}) as (proxy, _):
        stream = await raw_request(proxy, "GET", "/", {})
        loop = asyncio.get_running_loop()
        started, sent = loop.time(), 0
        moving = 0.0
        while loop.time() - started < 5:  # bounded: an event every 100 ms until the counter moves
            gate.release(EVENT)
            sent += 1
            assert await stream.next_chunk() == EVENT
            moving = metric(await scrape(proxy), "sseproxy_events_relayed_total", route="chat")
            if moving:
                break
            await asyncio.sleep(0.1)
        assert 0 < moving <= sent and loop.time() - started < 2.0  # within about a second, stream still open
        during = await scrape(proxy)
        assert metric(during, "sseproxy_active_streams", route="chat") == 1
        assert metric(during, "sseproxy_bytes_relayed_total", route="chat") == moving * len(EVENT)
        gate.release(EVENT + EVENT)
        assert await stream.next_chunk() == EVENT + EVENT
        sent += 2
        gate.release(None)
        assert await stream.next_chunk() is None
        for _ in range(100):  # bounded: until the end has been recorded
            after = await scrape(proxy)
            if metric(after, "sseproxy_stream_duration_seconds_count", route="chat") == 1:
                break
            await asyncio.sleep(0.02)
    assert metric(after, "sseproxy_events_relayed_total", route="chat") == sent  # no event counted twice
    assert metric(after, "sseproxy_bytes_relayed_total", route="chat") == sent * len(EVENT)
    assert metric(after, "sseproxy_event_gap_seconds_count", route="chat") == sent - 2  # per write after the first
    assert metric(after, "sseproxy_event_gap_seconds_bucket", route="chat", le="+Inf") == sent - 2
    assert metric(after, "sseproxy_event_gap_seconds_sum", route="chat") >= 0.1 * (sent - 3)
    assert metric(after, "sseproxy_stream_duration_seconds_sum", route="chat") >= 0.1 * (sent - 3)


async def test_every_route_has_its_series_at_0_from_the_start_and_after_a_reload() -> None:
    async with running_proxy({"routes": [{"name": "chat", "path": "/chat", "upstream": "http://127.0.0.1:1"},
                                         {"path": "/", "upstream": "http://127.0.0.1:1"}]}) as (proxy, runtime):
        text = await scrape(proxy)
        for route in ("chat", "/"):
            for name in ("sseproxy_events_relayed_total", "sseproxy_bytes_relayed_total",
                         "sseproxy_client_hangups_total", "sseproxy_active_streams", "sseproxy_heartbeats_total",
                         "sseproxy_time_to_first_event_seconds_count", "sseproxy_event_gap_seconds_count",
                         "sseproxy_stream_duration_seconds_count"):
                assert present(text, name, route=route), (name, route)
            assert present(text, "sseproxy_upstream_errors_total", route=route, type="upstream_unavailable")
        from sseproxy.config import Config
        from sseproxy.runtime import compile_config
        runtime.swap(compile_config(Config.model_validate(
            {"routes": [{"name": "new", "upstream": "http://127.0.0.1:1"}]})))
        assert present(await scrape(proxy), "sseproxy_events_relayed_total", route="new")


async def test_no_created_series_and_admin_requests_are_not_counted() -> None:
    async with running_app(echo_app()) as up, running_proxy({"routes": [{"name": "echo", "upstream": up}]}
                                                            ) as (proxy, _):
        assert (await raw_request(proxy, "GET", "/x", {})).status == 200
        assert (await raw_request(proxy, "GET", "/_sseproxy/health", {})).status == 200
        await scrape(proxy)
        text = await scrape(proxy)
    assert "_created" not in text
    assert metric(text, "sseproxy_requests_total", route="echo", method="GET", status="200", outcome="ok") == 1
    assert 'route="admin"' not in text
