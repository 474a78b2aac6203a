"""Numbers from one recording, with no I/O: time to first byte and first event, gaps between events,
events per read, and bursts (many events in few reads after a silence), the mark of events held back
and released together."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from .timeline import Read, Timeline

CLUSTER_GAP = 0.020  # s: reads closer than this are one arrival (a burst larger than a read comes in several)
BURST_EVENTS = 3  # an arrival with at least this many events ...
BURST_PER_READ = 3.0  # ... at least this many per read (a fast healthy stream has about one) ...
BURST_SILENCE = 0.100  # s: ... after at least this long without an event is a burst
BATCHED_SHARE = 0.5  # a stream with at least this share of its events in bursts is batched

# The response headers that decide whether a stream streams, in the order a report shows them.
STREAM_HEADERS = ("content-type", "content-encoding", "content-length", "transfer-encoding", "cache-control",
                  "x-accel-buffering", "vary", "connection", "via", "server", "x-powered-by", "x-cache",
                  "cf-cache-status")


@dataclass(frozen=True)
class Burst:
    t: float  # s from the request to the burst's first read
    events: int
    reads: int
    silence: float  # s without an event before it (from the request, for the first)


@dataclass(frozen=True)
class Gaps:
    p50: float  # ms
    p99: float
    max: float


@dataclass(frozen=True)
class Measures:
    accept_encoding: str
    status: int | None
    ttfb_ms: float | None  # to the response's first byte
    head_ms: float | None  # to the whole response head
    ttfe_ms: float | None  # to the first whole event
    events: int
    reads: int
    gaps_ms: Gaps | None  # None with fewer than two events
    max_events_per_read: int
    duration_ms: float  # to the last read
    bursts: tuple[Burst, ...]
    batched: bool
    ended: str
    headers: dict[str, str]  # the stream-relevant ones, lower-case names

    @property
    def burst_events(self) -> int:
        return sum(b.events for b in self.bursts)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1) of a non-empty sequence: always one of the values."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def gaps(times: Sequence[float]) -> list[float]:
    """Seconds between consecutive event times (0 for events completed by the same read)."""
    return [b - a for a, b in itertools.pairwise(times)]


def arrivals(reads: Sequence[Read]) -> list[list[Read]]:
    """Reads grouped into arrivals: each read within CLUSTER_GAP of the one before joins its arrival."""
    groups: list[list[Read]] = []
    for read in reads:
        if groups and read.t - groups[-1][-1].t <= CLUSTER_GAP:
            groups[-1].append(read)
        else:
            groups.append([read])
    return groups


def bursts(reads: Sequence[Read]) -> list[Burst]:
    """Arrivals of many events in few reads after a silence."""
    found: list[Burst] = []
    last_event = 0.0  # the request's start counts as the last sign of life before the first event
    for group in arrivals(reads):
        events = sum(r.events for r in group)
        if not events:
            continue
        first = next(r for r in group if r.events)
        silence = first.t - last_event
        with_events = [r for r in group if r.events]
        if (events >= BURST_EVENTS and events / len(with_events) >= BURST_PER_READ
                and silence >= BURST_SILENCE):
            found.append(Burst(first.t, events, len(with_events), silence))
        last_event = with_events[-1].t
    return found


def stream_headers(timeline: Timeline) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in STREAM_HEADERS:
        value = timeline.header(name)
        if value is not None:
            out[name] = value
    return out


def measure(timeline: Timeline) -> Measures:
    times = timeline.event_times()
    between = gaps(times)
    found = bursts(timeline.reads)
    events = len(times)
    batched = events >= BURST_EVENTS and sum(b.events for b in found) >= BATCHED_SHARE * events
    ms = 1000.0
    return Measures(
        accept_encoding=timeline.accept_encoding,
        status=timeline.status,
        ttfb_ms=timeline.reads[0].t * ms if timeline.reads else None,
        head_ms=timeline.head_at * ms if timeline.head_at is not None else None,
        ttfe_ms=times[0] * ms if times else None,
        events=events,
        reads=len(timeline.reads) + timeline.dropped_reads,
        gaps_ms=Gaps(percentile(between, 0.5) * ms, percentile(between, 0.99) * ms, max(between) * ms)
        if between else None,
        max_events_per_read=max((r.events for r in timeline.reads), default=0),
        duration_ms=timeline.reads[-1].t * ms if timeline.reads else 0.0,
        bursts=tuple(found),
        batched=batched,
        ended=timeline.ended,
        headers=stream_headers(timeline),
    )
