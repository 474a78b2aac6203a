"""Metrics a dashboard can use: counters that move while a stream runs, series from the start, no
``_created`` series, scrapes not counted, and histograms of gaps between events and stream duration."""

from __future__ import annotations

import asyncio

from helpers import Gate, raw_request, running_app, running_proxy
from multidict import CIMultiDict, CIMultiDictProxy
from test_operations import metric, scrape
from upstreams import echo_app, gated_stream_app

from sseproxy.accesslog import RequestRecord
from sseproxy.framing import StreamKind
from sseproxy.hooks import ExchangeInfo
from sseproxy.metrics import Metrics

EVENT = b"data: " + b"x" * 20 + b"\n\n"


def present(text: str, name: str, **labels: str) -> bool:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return any(line.startswith(f"{name}{{{wanted}}} ") for line in text.splitlines())


async def test_events_and_bytes_are_counted_while_a_stream_runs_and_exactly_once() -> None:
    """A scrape while a stream runs shows exactly what it has written so far (the scrape reads the
    streams' tallies); at the end nothing is counted twice and no stream is left in the sweep."""
    gate = Gate()
    async with running_app(gated_stream_app(gate, "text/event-stream")) as up, running_proxy(
            {"heartbeat": 0, "routes": [{"name": "chat", "upstream": up}]}) as (proxy, runtime):
        stream = await raw_request(proxy, "GET", "/", {})
        sent = 0
        for _ in range(3):  # bounded: each a little apart, so the gaps have a sum
            gate.release(EVENT)
            sent += 1
            assert await stream.next_chunk() == EVENT
            during = await scrape(proxy)
            assert metric(during, "sseproxy_events_relayed_total", route="chat") == sent
            assert metric(during, "sseproxy_bytes_relayed_total", route="chat") == sent * len(EVENT)
            assert metric(during, "sseproxy_active_streams", route="chat") == 1
            await asyncio.sleep(0.1)
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
        assert not runtime.metrics.live
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


async def test_one_sweep_a_second_hands_on_what_the_streams_in_flight_counted() -> None:
    """No scrape and no end: the metrics' one timer still hands a running stream's tally on (with
    --workers, a scrape may be answered by a worker that does not relay it), and stops when no
    stream is left."""
    loop = asyncio.get_running_loop()
    metrics = Metrics()
    info = ExchangeInfo(id=1, route="r", method="GET", path="/", query="", client=None,
                        headers=CIMultiDictProxy(CIMultiDict()), started=loop.time())
    meter = metrics.open(info)
    meter.response(200, CIMultiDict(), StreamKind.SSE)
    info.tally.wrote(len(EVENT), loop.time(), 1)
    counted = None
    for _ in range(50):  # bounded: two sweeps (tally -> pending -> prometheus-client) take about 2 s
        counted = metrics.registry.get_sample_value("sseproxy_events_relayed_total", {"route": "r"})
        if counted == 1:
            break
        await asyncio.sleep(0.1)
    assert counted == 1 and metrics.live == {meter}
    meter.end(RequestRecord(method="GET", path="/", started=info.started, events=1, bytes=len(EVENT)))
    assert not metrics.live
    for _ in range(30):  # bounded: the next sweep finds no stream and is not armed again
        if metrics._sweep is None:
            break
        await asyncio.sleep(0.1)
    assert metrics._sweep is None
