"""Prometheus metrics on a registry the app owns (never the global default one).

Most series are recorded once per request, when it ends, from its ``RequestRecord``. Events and bytes
relayed, and the gaps between events, move while a stream runs: the relay counts them in the
stream's ``Tally`` as it writes, and one sweep a second (not a timer per stream) hands what the
streams in flight counted on, as does a scrape and each stream's end; so a dashboard sees a long
stream progress while the metrics cost nothing per event. The active-streams gauge moves when a
stream starts and ends.

What is handed on waits in ``Pending``, plain numbers per series, until a scrape (or the sweep, while
streams run): prometheus-client takes a lock and makes several calls per increment, about a dozen of
them per request, a tenth of the Python a stream costs to open. A scrape flushes first, so it is exact.
With ``--workers`` every increment goes to the shared files at once, as another worker may answer
the scrape. Every configured route has its series from
the start, at 0, so no panel says "no data"; no ``_created`` series are exposed; admin requests
(health, metrics scrapes) are not counted.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Iterable, Iterator
from typing import Any

from multidict import CIMultiDict
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from .accesslog import RequestRecord
from .errors import Outcome
from .framing import StreamKind
from .hooks import ExchangeInfo
from .tally import GAP_BUCKETS

UPSTREAM_FAILURES = frozenset({Outcome.UPSTREAM_ERROR, Outcome.TIMEOUT})
UPSTREAM_ERROR_TYPES = ("upstream_unavailable", "upstream_timeout", "upstream_error")  # series made up front

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
DURATION_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
FLUSH_EVERY = 1.0  # seconds: how stale a running stream's counters may be (with --workers, on a scrape)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_NONE = StreamKind.NONE


class _WithoutCreated(Collector):
    """A registry's metrics without the ``_created`` samples (prometheus-client's switch for them is
    process-wide state; this filter is the registry's own)."""

    def __init__(self, source: Collector):
        self.source = source

    def collect(self) -> Iterator[Metric]:
        for metric in self.source.collect():
            metric.samples = [s for s in metric.samples if not s.name.endswith("_created")]
            yield metric


def _observe_many(child: Any, bounds: tuple[float, ...], counts: list[int], total: float) -> None:
    """Add ``counts`` (one per bucket of ``bounds`` and +Inf, not cumulative, as ``Histogram.observe``
    keeps them) and their ``total`` to a histogram child in one step, where observing each value
    would lock per value."""
    buckets = getattr(child, "_buckets", None)
    sum_value = getattr(child, "_sum", None)
    if buckets is None or sum_value is None or len(buckets) != len(counts):  # not the layout known: one by one
        uppers = [*bounds, float("inf")]
        for i, n in enumerate(counts):
            for _ in range(n):
                child.observe(uppers[i])
        return
    sum_value.inc(total)
    for i, n in enumerate(counts):
        if n:
            buckets[i].inc(n)


class Pending:
    """Increments and observations not yet handed to prometheus-client, per series child."""

    __slots__ = ("histograms", "increments")

    def __init__(self) -> None:
        self.increments: dict[Any, float] = {}  # added to by ``Metrics.add``
        self.histograms: dict[Any, tuple[tuple[float, ...], list[int], list[float]]] = {}

    def observe(self, child: Any, bounds: tuple[float, ...], counts: list[int] | None, value: float) -> None:
        """One ``value``, or with ``counts`` many whose sum is ``value``."""
        entry = self.histograms.get(child)
        if entry is None:
            entry = self.histograms[child] = (bounds, [0] * (len(bounds) + 1), [0.0])
        if counts is None:
            entry[1][bisect.bisect_left(bounds, value)] += 1  # Histogram's buckets: value <= bound
        else:
            for i, n in enumerate(counts):
                entry[1][i] += n
        entry[2][0] += value

    def flush(self) -> None:
        increments, self.increments = self.increments, {}
        histograms, self.histograms = self.histograms, {}
        for child, amount in increments.items():
            if amount:
                child.inc(amount)
        for child, (bounds, counts, total) in histograms.items():
            _observe_many(child, bounds, counts, total[0])


class RouteSeries:
    """One route's series children, looked up once per route rather than per request (each lookup
    builds and hashes a key): the ones every request or stream of the route touches."""

    __slots__ = ("active", "bytes", "duration", "events", "gaps", "hangups", "requests", "ttfb", "ttfe")

    def __init__(self, metrics: Metrics, route: str):
        self.active = metrics.child(metrics.active_streams, route)
        self.ttfb = metrics.child(metrics.ttfb, route)
        self.ttfe = metrics.child(metrics.ttfe, route)
        self.events = metrics.child(metrics.events, route)
        self.bytes = metrics.child(metrics.bytes, route)
        self.gaps = metrics.child(metrics.gaps, route)
        self.duration = metrics.child(metrics.duration, route)
        self.hangups = metrics.child(metrics.client_hangups, route)
        self.requests: dict[tuple[str, int, Outcome], Any] = {}  # (method, status, outcome): bounded as
        # the children are (a few methods, the statuses an upstream answers, seven outcomes)


class StreamMeter:
    """One exchange's running counts, read from its ``Tally`` (the relay keeps it as it writes): by the
    metrics' one sweep over the streams in flight once a second, by a scrape, and at the end. At the
    end, whatever the record holds beyond what was flushed (heartbeats, the proxy's error event, a
    WebSocket's frames) is added, so the totals equal the access log's, never counted twice."""

    sees_writes = False  # it reads the tally: never called per write

    __slots__ = ("_flushed_bytes", "_flushed_events", "_metrics", "_series", "_stream", "_tally")

    def __init__(self, metrics: Metrics, info: ExchangeInfo):
        self._metrics = metrics
        self._series = metrics.series(info.route)
        self._tally = info.tally
        self._stream = False  # an event, line or raw stream: its gaps are observed
        self._flushed_events = self._flushed_bytes = 0

    def request_body(self, chunk: bytes) -> None:
        pass

    def response(self, status: int, headers: CIMultiDict[str], kind: StreamKind) -> None:
        self._stream = kind is not _NONE

    def data(self, chunk: bytes, at: float, frames: int) -> None:
        pass  # not a writer (``sees_writes``)

    def flush(self) -> None:
        """What the tally counted since the last flush, to the metrics (an idle stream: nothing)."""
        tally = self._tally
        if tally.bytes != self._flushed_bytes:  # every write adds bytes: no new bytes, no new events or gaps
            self._add(tally.events, tally.bytes)

    def _add(self, events: int, nbytes: int) -> None:
        m, series = self._metrics, self._series
        if events > self._flushed_events:
            m.add(series.events, events - self._flushed_events)
            self._flushed_events = events
        if nbytes > self._flushed_bytes:
            m.add(series.bytes, nbytes - self._flushed_bytes)
            self._flushed_bytes = nbytes
        if self._stream:
            gaps = self._tally.take_gaps()
            if gaps is not None:
                m.observe_many(series.gaps, GAP_BUCKETS, *gaps)

    def end(self, record: RequestRecord) -> None:
        self._metrics.live.discard(self)
        self._add(record.events, record.bytes)
        if self._stream and record.total is not None:
            self._metrics.observe_value(self._series.duration, DURATION_BUCKETS, record.total)


class Metrics:
    """``multiprocess_dir`` (with ``--workers``): every worker writes there, and any worker's
    ``render`` sums them all, so a scrape sees the whole server whichever worker answers it.
    It is also the hook factory of the running counters (``StreamMeter``)."""

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        self._pending = Pending() if multiprocess_dir is None else None  # with workers: at once, for all
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}  # bounded by routes x statuses x outcomes
        self._series: dict[str, RouteSeries] = {}
        self.live: set[StreamMeter] = set()  # the streams in flight, for the sweep and a scrape
        self._sweep: asyncio.TimerHandle | None = None
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
        self.gaps = Histogram("sseproxy_event_gap_seconds", "Time between consecutive writes of events to a client",
                              ["route"], buckets=GAP_BUCKETS, registry=r)
        self.duration = Histogram("sseproxy_stream_duration_seconds", "How long streams lasted, start to end",
                                  ["route"], buckets=DURATION_BUCKETS, registry=r)
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
        self.resumes = Counter("sseproxy_resumes", "Resume requests (Last-Event-ID) by result", ["route", "result"],
                               registry=r)
        self.resume_replayed = Counter("sseproxy_resume_replayed_events", "Stored events replayed to resuming clients",
                                       ["route"], registry=r)
        self.resume_store_bytes = Gauge("sseproxy_resume_store_bytes", "Bytes of events held by the memory store",
                                        registry=r, multiprocess_mode="livesum")
        self.detached_streams = Gauge("sseproxy_detached_streams", "Resumable streams running with no client",
                                      registry=r, multiprocess_mode="livesum")
        self.resume_store_errors = Counter("sseproxy_resume_store_errors",
                                           "Streams relayed without ids because the resume store was down",
                                           registry=r)
        self.llm_cancelled = Counter("sseproxy_llm_streams_cancelled", "LLM streams the client left before the end",
                                     ["route"], registry=r)

    def add_routes(self, routes: Iterable[str]) -> None:
        """Make every per-route series of ``routes`` now, at 0, so dashboards have them from the start."""
        for route in routes:
            for metric in (self.active_streams, self.ttfb, self.ttfe, self.gaps, self.duration, self.events,
                           self.bytes, self.client_hangups, self.heartbeats):
                metric.labels(route)
            for kind in UPSTREAM_ERROR_TYPES:
                self.upstream_errors.labels(route, kind)

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once: prometheus-client takes a lock and builds a
        key on every ``labels`` call, which adds up at several calls per request."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def series(self, route: str) -> RouteSeries:
        series = self._series.get(route)
        if series is None:
            series = self._series[route] = RouteSeries(self, route)
        return series

    def add(self, child: Any, amount: float = 1) -> None:
        """``child.inc(amount)``, at the next flush (a gauge's ``amount`` may be negative): a dict
        update, about a dozen times per request."""
        pending = self._pending
        if pending is None:
            child.inc(amount)
            return
        increments = pending.increments
        increments[child] = increments.get(child, 0) + amount

    def observe_value(self, child: Any, bounds: tuple[float, ...], value: float) -> None:
        """``child.observe(value)`` on a histogram of ``bounds``, at the next flush."""
        if self._pending is None:
            child.observe(value)
        else:
            self._pending.observe(child, bounds, None, value)

    def observe_many(self, child: Any, bounds: tuple[float, ...], counts: list[int], total: float) -> None:
        if self._pending is None:
            _observe_many(child, bounds, counts, total)
        else:
            self._pending.observe(child, bounds, counts, total)

    def flush(self) -> None:
        for meter in self.live:
            meter.flush()
        if self._pending is not None:
            self._pending.flush()

    def open(self, info: ExchangeInfo) -> StreamMeter:
        meter = StreamMeter(self, info)
        self.live.add(meter)
        if self._sweep is None:
            self._arm()
        return meter

    def _arm(self) -> None:
        """One timer for every stream in flight (never one per stream): their counts, once a second."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a meter opened outside a loop (a test's): counted at its end and on scrapes
            return
        self._sweep = loop.call_later(FLUSH_EVERY, self._swept)

    def _swept(self) -> None:
        self._sweep = None
        for meter in self.live:
            meter.flush()
        if self._pending is not None:
            self._pending.flush()
        if self.live:
            self._arm()

    def observe(self, record: RequestRecord) -> None:
        """The request's end. Events and bytes are not here: its ``StreamMeter`` counted them."""
        if record.admin:
            return
        route = record.route or "-"
        series = self.series(route)
        key = (record.method, record.status, record.outcome)
        requests = series.requests.get(key)
        if requests is None:
            requests = series.requests[key] = self.child(self.requests, route, record.method, str(record.status),
                                                         record.outcome.value)
        self.add(requests)
        if record.ttfb is not None:
            self.observe_value(series.ttfb, LATENCY_BUCKETS, record.ttfb)
        if record.ttfe is not None:
            self.observe_value(series.ttfe, LATENCY_BUCKETS, record.ttfe)
        if record.heartbeats:
            self.add(self.child(self.heartbeats, route), record.heartbeats)
        if record.outcome is Outcome.CLIENT_CLOSED:
            self.add(series.hangups)
            if record.llm:
                self.add(self.child(self.llm_cancelled, route))
        self.count_tokens(route, record.tokens_in, record.tokens_out)
        for status in record.retried:
            self.add(self.child(self.retries, route, str(status)))
        if record.outcome in UPSTREAM_FAILURES:
            self.add(self.child(self.upstream_errors, route, record.error_type or record.outcome.value))

    def count_tokens(self, route: str, tokens_in: int | None, tokens_out: int | None) -> None:
        """LLM usage, at a request's end, or a resumable stream's end for what came after it."""
        if tokens_in:
            self.add(self.child(self.tokens, route, "input"), tokens_in)
        if tokens_out:
            self.add(self.child(self.tokens, route, "output"), tokens_out)

    def render(self) -> bytes:
        self.flush()
        if self.multiprocess_dir is None:
            return generate_latest(_WithoutCreated(self.registry))
        combined = CollectorRegistry()
        MultiProcessCollector(combined, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        return generate_latest(_WithoutCreated(combined))
