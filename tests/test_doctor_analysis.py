"""The doctor's judgement from hand-made timelines: no sockets, no clocks."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from hypothesis import given
from hypothesis import strategies as st

from sseproxy.doctor import fixes
from sseproxy.doctor.analysis import Diagnosis, diagnose
from sseproxy.doctor.measures import BURST_SILENCE, CLUSTER_GAP, bursts, measure, percentile
from sseproxy.doctor.plot import svg
from sseproxy.doctor.report import EXIT_CODES, arrival_line, text, to_json
from sseproxy.doctor.timeline import Failure, Read, Timeline
from sseproxy.framing import stream_kind

BROWSER = "gzip, deflate, br"
SSE = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache, no-transform"}
SPEC_KEYS = {"verdict", "causes", "events", "ttfb_ms", "ttfe_ms", "gaps_ms", "max_events_per_read", "headers"}


def timeline(reads: list[tuple[float, int]], headers: dict[str, str] | None = None, encoding: str = BROWSER,
             head_at: float = 0.002, ended: str = "complete", status: int = 200) -> Timeline:
    h = SSE if headers is None else headers
    t = Timeline(encoding, status=status, reason="OK", headers=tuple(h.items()), head_at=head_at,
                 reads=[Read(head_at, 200, 0)] + [Read(at, 40 * n, n) for at, n in reads], ended=ended)
    t.kind = stream_kind(t.header("Content-Type"), "auto")
    return t


def paced(n: int = 20, gap: float = 0.03) -> list[tuple[float, int]]:
    return [(0.03 + i * gap, 1) for i in range(n)]


def held(n: int = 20, at: float = 0.6) -> list[tuple[float, int]]:
    return [(at, n)]


def codes(d: Diagnosis, severity: str | None = None) -> list[str]:
    return [c.code for c in d.causes if severity is None or c.severity == severity]


# measures


@given(st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=1, max_size=200))
def test_percentiles_are_values_in_order(values: list[float]) -> None:
    p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
    assert p50 in values and p99 in values
    assert min(values) <= p50 <= p99 <= max(values)
    assert percentile(values, 1.0) == max(values)


@given(st.integers(min_value=2, max_value=200), st.floats(min_value=CLUSTER_GAP * 1.01, max_value=5.0),
       st.floats(min_value=0, max_value=30))
def test_a_stream_paced_one_event_per_read_is_never_batched(n: int, gap: float, first: float) -> None:
    reads = [Read(first + i * gap, 50, 1) for i in range(n)]
    assert bursts(reads) == []
    tl = timeline([(r.t, r.events) for r in reads])
    assert not measure(tl).batched
    assert diagnose(tl, tl, 30).verdict == "streams"


@given(st.integers(min_value=9, max_value=500), st.floats(min_value=BURST_SILENCE, max_value=60),
       st.integers(min_value=1, max_value=3))
def test_many_events_in_few_reads_after_a_silence_is_batched(n: int, silence: float, reads: int) -> None:
    """At least three events per read (``n`` >= 9 over at most 3 reads), all within a moment."""
    share = [n // reads + (1 if i < n % reads else 0) for i in range(reads)]
    tl = timeline([(silence + i * 0.001, k) for i, k in enumerate(share) if k])
    m = measure(tl)
    assert m.batched and m.events == n
    assert len(m.bursts) == 1 and m.bursts[0].events == n


def test_events_sent_at_once_right_away_are_not_a_burst() -> None:
    """A server that had its events ready and sent them at once, at once, held nothing back."""
    m = measure(timeline([(0.004, 20)]))
    assert not m.batched and m.max_events_per_read == 20


def test_measures_from_a_paced_stream() -> None:
    m = measure(timeline(paced(11, 0.05)))
    assert m.events == 11 and m.max_events_per_read == 1
    assert m.ttfb_ms == 2.0 and round(m.ttfe_ms or 0) == 30
    assert m.gaps_ms is not None and round(m.gaps_ms.p50) == round(m.gaps_ms.max) == 50


def test_a_minority_of_bursts_in_a_healthy_stream_is_not_batching() -> None:
    """A loaded machine may deliver a few events together after a stall; the stream still streams."""
    reads = paced(20, 0.04)
    reads[5:9] = [(reads[8][0], 4)]  # held 160 ms by a stall, then delivered together
    m = measure(timeline(reads))
    assert len(m.bursts) == 1 and not m.batched


# verdicts and causes


def test_a_healthy_stream_streams_with_no_causes() -> None:
    d = diagnose(timeline(paced()), timeline(paced(), encoding="identity"), 30)
    assert d.verdict == "streams" and d.causes == ()


def test_gzip_only_batching_is_the_compression_cause_with_the_usual_culprits() -> None:
    gz = {**SSE, "Content-Encoding": "gzip", "Cache-Control": "no-cache"}
    d = diagnose(timeline(held(20, 0.6), gz), timeline(paced(), {**SSE, "Cache-Control": "no-cache"}, "identity"), 30)
    assert d.verdict == "buffered"
    assert codes(d) == ["compression", "no_transform_missing"]
    cause = d.causes[0]
    assert cause.severity == "problem"
    assert "Content-Encoding: gzip" in cause.message and "all 20 events in 1 read" in cause.message
    assert "only when compression is accepted" in cause.message
    for culprit in ("webpack-dev-server", "compress: false", "Next.js", "`compression` middleware", "sseproxy"):
        assert culprit in cause.fix


def test_a_stream_held_past_the_timeout_when_gzip_is_accepted_is_buffered() -> None:
    gz = {**SSE, "Content-Encoding": "gzip"}
    d = diagnose(timeline([], gz, ended="timeout"), timeline(paced(), encoding="identity"), 2)
    assert d.verdict == "buffered" and codes(d, "problem") == ["compression"]
    assert "no event arrived before the doctor stopped listening" in d.causes[0].message


def test_a_compressed_stream_that_still_streams_gets_a_warning_only() -> None:
    d = diagnose(timeline(paced(), {**SSE, "Content-Encoding": "br"}), timeline(paced(), encoding="identity"), 30)
    assert d.verdict == "streams" and codes(d) == ["content_encoding"]
    assert d.causes[0].severity == "warning" and "Content-Encoding: br" in d.causes[0].message


def test_content_length_on_a_batched_stream_is_the_problem() -> None:
    sized = {**SSE, "Content-Length": "840"}
    d = diagnose(timeline(held(), sized, head_at=0.6), timeline(held(), sized, "identity", head_at=0.6), 30)
    assert d.verdict == "buffered" and codes(d, "problem") == ["content_length"]
    assert "Content-Length: 840" in d.causes[0].message


def test_content_length_on_a_stream_that_streams_is_a_warning() -> None:
    d = diagnose(timeline(paced(), {**SSE, "Content-Length": "800"}), None, 30)
    assert d.verdict == "streams" and codes(d, "warning") == ["content_length"]


def test_an_idle_start_then_a_burst_in_both_requests_is_a_buffering_intermediary() -> None:
    via = {**SSE, "Server": "nginx/1.22.1"}
    d = diagnose(timeline(held(20, 0.8), via), timeline(held(20, 0.8), via, "identity"), 30)
    assert d.verdict == "buffered" and codes(d) == ["buffering_intermediary"]
    cause = d.causes[0]
    assert "nothing for 798 ms" in cause.message and "Server: nginx/1.22.1" in cause.message
    assert "proxy_buffering off" in cause.fix and "X-Accel-Buffering: no" in cause.fix


def test_repeated_bursts_count_as_batching() -> None:
    """A proxy that flushes each time its buffer fills: bursts through the whole stream."""
    reads = [(0.3 + i * 0.3, 15) for i in range(8)]
    d = diagnose(timeline(reads), timeline(reads, encoding="identity"), 30)
    assert d.verdict == "buffered" and codes(d) == ["buffering_intermediary"]
    assert "15 events in 1 read" in d.causes[0].message


def test_missing_no_transform_is_a_warning() -> None:
    d = diagnose(timeline(paced(), {"Content-Type": "text/event-stream"}), None, 30)
    assert d.verdict == "streams" and codes(d) == ["no_transform_missing"]
    assert "no Cache-Control header" in d.causes[0].message


def test_ndjson_is_a_stream_too() -> None:
    d = diagnose(timeline(paced(), {"Content-Type": "application/x-ndjson", "Cache-Control": "no-transform"}),
                 None, 30)
    assert d.verdict == "streams"


def test_json_is_not_a_stream() -> None:
    tl = timeline([], {"Content-Type": "application/json"})
    tl.body_bytes = 1234
    d = diagnose(tl, None, 30)
    assert d.verdict == "not_a_stream" and codes(d) == ["not_a_stream"]
    assert "Content-Type: application/json" in d.causes[0].message and "1,234 bytes" in d.causes[0].message


def test_failures_and_http_errors_are_errors() -> None:
    refused = Timeline(BROWSER, failure=Failure("connect_failed", "cannot connect to 127.0.0.1:1: Connection refused"))
    assert codes(diagnose(refused, None, 30)) == ["connect_failed"]
    assert diagnose(refused, None, 30).verdict == "error"
    missing = timeline([], {"Content-Type": "text/html"}, status=404)
    assert codes(diagnose(missing, None, 30)) == ["http_error"]
    moved = timeline([], {"Location": "/new"}, status=302)
    d = diagnose(moved, None, 30)
    assert codes(d) == ["redirect"] and "Location: /new" in d.causes[0].message


def test_a_stream_without_events_is_an_error_naming_the_wait() -> None:
    d = diagnose(timeline([], ended="timeout"), timeline([], encoding="identity", ended="timeout"), 5)
    assert d.verdict == "error" and codes(d) == ["no_events"] and "in 5 s" in d.causes[0].message


def test_few_events_and_a_cut_stream_are_warned_about() -> None:
    d = diagnose(timeline(paced(2), ended="closed"), None, 30)
    assert d.verdict == "streams" and codes(d) == ["truncated", "few_events"]


def test_every_cause_code_has_a_fix_and_the_codes_are_stable() -> None:
    assert set(fixes.FIXES) == {
        "compression", "content_encoding", "content_length", "buffering_intermediary", "no_transform_missing",
        "truncated", "few_events", "not_a_stream", "no_events", "connect_failed", "timeout", "bad_response",
        "decode_failed", "redirect", "http_error"}
    assert EXIT_CODES == {"streams": 0, "buffered": 1, "not_a_stream": 1, "error": 2}


# output


def test_the_arrival_line_has_one_mark_per_event_over_the_duration() -> None:
    tl = timeline([(0.1, 1), (0.5, 3), (1.0, 12)], head_at=0.0)
    assert arrival_line(tl, 1.0, 11) == "H|···3····#"


def test_text_report_is_plain_unless_coloured() -> None:
    d = diagnose(timeline(held()), timeline(paced(), encoding="identity"), 30)
    plain = text(d, "GET", "http://x/events")
    assert "\x1b[" not in plain
    assert "BUFFERED" in plain and "buffering_intermediary" in plain and "fix:" in plain
    assert "\x1b[" in text(d, "GET", "http://x/events", colour=True)


def test_json_has_the_spec_keys() -> None:
    d = diagnose(timeline(paced()), timeline(paced(), encoding="identity"), 30)
    out = to_json(d, "GET", "http://x/events")
    assert set(out) >= SPEC_KEYS
    assert set(out["gaps_ms"]) == {"p50", "p99", "max"}
    assert all({"code", "message", "fix"} <= set(c) for c in out["causes"])
    assert out["events"] == 20 and out["identity"]["events"] == 20
    refused = to_json(diagnose(Timeline(BROWSER, failure=Failure("connect_failed", "no")), None, 30), "GET", "x")
    assert set(refused) >= SPEC_KEYS and refused["verdict"] == "error" and refused["events"] == 0


def test_the_plot_is_svg_with_one_mark_per_event_and_the_reads_marked() -> None:
    d = diagnose(timeline(held(20, 0.6)), timeline(paced(25), encoding="identity"), 30)
    root = ET.fromstring(svg(d, "http://x/events?a=1&b=<2>"))
    ns = "{http://www.w3.org/2000/svg}"
    assert root.tag == f"{ns}svg"
    marks = root.findall(f".//{ns}circle[@class='event']")
    assert len([m for m in marks if m.get("data-run") == "browser"]) == 20
    assert len([m for m in marks if m.get("data-run") == "identity"]) == 25
    reads = root.findall(f".//{ns}line[@class='read']")
    assert len([r for r in reads if r.get("data-run") == "browser"]) == 2  # the head's read and the burst
