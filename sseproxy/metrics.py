"""Prometheus metrics on a registry the app owns (never the global default one).

Everything is recorded once per request, when it ends, from its ``RequestRecord``: no label lookup
or lock on the per-event path. The active-streams gauge is the one exception: it moves when a stream
starts and ends.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from .accesslog import RequestRecord
from .errors import Outcome

UPSTREAM_FAILURES = frozenset({Outcome.UPSTREAM_ERROR, Outcome.TIMEOUT})

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """``multiprocess_dir`` (with ``--workers``): every worker writes there, and any worker's
    ``render`` sums them all, so a scrape sees the whole server whichever worker answers it."""

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("sseproxy_requests", "Requests by route, method, status and outcome",
                                ["route", "method", "status", "outcome"], registry=r)
        self.active_streams = Gauge("sseproxy_active_streams", "Streams being relayed now", ["route"], registry=r,
                                    multiprocess_mode="livesum")
        self.ttfb = Histogram("sseproxy_time_to_first_byte_seconds", "Time to the upstream's response headers",
                              ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttfe = Histogram("sseproxy_time_to_first_event_seconds", "Time to the first whole event or line",
                              ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.events = Counter("sseproxy_events_relayed", "Whole events and lines relayed", ["route"], registry=r)
        self.bytes = Counter("sseproxy_bytes_relayed", "Response body bytes relayed", ["route"], registry=r)
        self.upstream_errors = Counter("sseproxy_upstream_errors", "Upstream failures by type",
                                       ["route", "type"], registry=r)
        self.client_hangups = Counter("sseproxy_client_hangups", "Clients that left before the end", ["route"],
                                      registry=r)
        self.heartbeats = Counter("sseproxy_heartbeats", "Keep-alive comments sent", ["route"], registry=r)
        self.reloads = Counter("sseproxy_config_reloads", "Config reloads by result", ["result"], registry=r)
        self.retries = Counter("sseproxy_upstream_retries", "Upstream answers retried before the first byte",
                               ["route", "status"], registry=r)
        self.tokens = Counter("sseproxy_llm_tokens", "LLM tokens read from streams' usage", ["route", "kind"],
                              registry=r)
        self.llm_cancelled = Counter("sseproxy_llm_streams_cancelled", "LLM streams the client left before the end",
                                     ["route"], registry=r)

    def observe(self, record: RequestRecord) -> None:
        route = record.route or "-"
        self.requests.labels(route, record.method, str(record.status), record.outcome.value).inc()
        if record.ttfb is not None:
            self.ttfb.labels(route).observe(record.ttfb)
        if record.ttfe is not None:
            self.ttfe.labels(route).observe(record.ttfe)
        if record.events:
            self.events.labels(route).inc(record.events)
        if record.bytes:
            self.bytes.labels(route).inc(record.bytes)
        if record.heartbeats:
            self.heartbeats.labels(route).inc(record.heartbeats)
        if record.outcome is Outcome.CLIENT_CLOSED:
            self.client_hangups.labels(route).inc()
            if record.llm:
                self.llm_cancelled.labels(route).inc()
        if record.tokens_in:
            self.tokens.labels(route, "input").inc(record.tokens_in)
        if record.tokens_out:
            self.tokens.labels(route, "output").inc(record.tokens_out)
        for status in record.retried:
            self.retries.labels(route, str(status)).inc()
        if record.outcome in UPSTREAM_FAILURES:
            self.upstream_errors.labels(route, record.error_type or record.outcome.value).inc()

    def render(self) -> bytes:
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        combined = CollectorRegistry()
        MultiProcessCollector(combined, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        return generate_latest(combined)
