"""The diagnosis for people and for scripts: a short text report with a one-line arrival timeline per
request, and the ``--json`` object. Returns strings; the CLI prints them."""

from __future__ import annotations

import textwrap
from typing import Any

from ..framing import StreamKind
from .analysis import Diagnosis, ms
from .measures import Measures
from .timeline import Timeline

VERDICT_LINES = {
    "streams": "STREAMS: events arrive one by one, as they are sent",
    "buffered": "BUFFERED: events are held back and released together",
    "not_a_stream": "NOT A STREAM: the response is an ordinary body",
    "error": "ERROR: nothing could be measured",
}
EXIT_CODES = {"streams": 0, "buffered": 1, "not_a_stream": 1, "error": 2}
_COLOURS = {"streams": "32", "buffered": "33", "not_a_stream": "33", "error": "31",
            "problem": "31", "warning": "33"}
_LABEL = 18  # width of the column naming each request


def _paint(text: str, key: str, colour: bool) -> str:
    code = _COLOURS.get(key)
    return f"\x1b[1;{code}m{text}\x1b[0m" if colour and code else text


def arrival_line(timeline: Timeline, span: float, width: int) -> str:
    """One mark per event over ``span`` seconds in ``width`` slots: ``|`` one event, a digit that many,
    ``#`` ten or more, ``H`` the response head, ``·`` nothing."""
    slots = [0] * width
    head = -1
    scale = width / span if span > 0 else 0.0

    def slot(t: float) -> int:
        return min(width - 1, int(t * scale))

    for read in timeline.reads:
        slots[slot(read.t)] += read.events
    if timeline.head_at is not None:
        head = slot(timeline.head_at)
    marks = []
    for i, n in enumerate(slots):
        if n == 0:
            marks.append("H" if i == head else "·")
        else:
            marks.append("|" if n == 1 else str(n) if n < 10 else "#")
    return "".join(marks)


def _runs(d: Diagnosis) -> list[tuple[str, Timeline, Measures]]:
    runs = [(d.browser.accept_encoding, d.browser, d.measures)]
    if d.identity is not None and d.identity_measures is not None:
        runs.append(("identity", d.identity, d.identity_measures))
    return [(label, t, m) for label, t, m in runs if m is not None]


def _table(runs: list[tuple[str, Timeline, Measures]]) -> list[str]:
    rows = [("Accept-Encoding", "status", "TTFB", "1st event", "events", "gap p50/p99/max", "most/read")]
    for label, _, m in runs:
        g = m.gaps_ms
        gaps = f"{ms(g.p50)} / {ms(g.p99)} / {ms(g.max)}" if g else "-"
        rows.append((label, str(m.status or "-"), ms(m.ttfb_ms), ms(m.ttfe_ms), str(m.events), gaps,
                     str(m.max_events_per_read)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    widths[0] = max(widths[0], _LABEL)
    return ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def text(d: Diagnosis, method: str, url: str, colour: bool = False, width: int = 100) -> str:
    lines = [f"sseproxy doctor: {method} {url}", "", "  " + _paint(VERDICT_LINES[d.verdict], d.verdict, colour)]
    runs = _runs(d)
    if runs:
        lines += ["", *_table(runs)]
    if runs and d.browser.kind in (StreamKind.SSE, StreamKind.LINES):
        span = max(m.duration_ms for _, _, m in runs) / 1000
        cols = max(20, min(100, width - _LABEL - 6))
        lines += ["", f"  arrivals over {ms(span * 1000)}: | one event, 2-9 that many, # ten or more, H headers"]
        lines += [f"  {label.ljust(_LABEL)}  {arrival_line(t, span, cols)}" for label, t, _ in runs]
        ended = {"timeout": "still open when the doctor stopped listening", "closed": "cut off by a close"}
        notes = [f"{label}: {ended[m.ended]}" for label, _, m in runs if m.ended in ended]
        if notes:
            lines.append("  (" + "; ".join(notes) + ")")
    if runs:
        headers = d.measures.headers if d.measures else {}
        if headers:
            lines += ["", "  headers:"] + [f"    {k.title()}: {v}" for k, v in headers.items()]
    wrap = max(40, width - 6)
    for cause in d.causes:
        lines += ["", f"  {_paint(cause.severity, cause.severity, colour)}  {cause.code}"]
        lines += textwrap.wrap(cause.message, wrap, initial_indent="    ", subsequent_indent="    ",
                               break_on_hyphens=False)
        lines += textwrap.wrap("fix: " + cause.fix, wrap, initial_indent="    ", subsequent_indent="         ",
                               break_on_hyphens=False)
    return "\n".join(lines)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _measures_json(m: Measures | None, t: Timeline | None) -> dict[str, Any]:
    if m is None or t is None:
        return {"events": 0, "ttfb_ms": None, "ttfe_ms": None, "gaps_ms": None, "max_events_per_read": 0,
                "headers": {}, "status": None}
    g = m.gaps_ms
    return {
        "events": m.events, "ttfb_ms": _round(m.ttfb_ms), "ttfe_ms": _round(m.ttfe_ms),
        "gaps_ms": {"p50": _round(g.p50), "p99": _round(g.p99), "max": _round(g.max)} if g else None,
        "max_events_per_read": m.max_events_per_read, "headers": m.headers, "status": m.status,
        "accept_encoding": m.accept_encoding, "head_ms": _round(m.head_ms), "duration_ms": _round(m.duration_ms),
        "reads": m.reads, "ended": m.ended, "batched": m.batched,
        "bursts": [{"t_ms": _round(b.t * 1000), "events": b.events, "reads": b.reads,
                    "silence_ms": _round(b.silence * 1000)} for b in m.bursts],
        "event_times_ms": [_round(x * 1000) for x in t.event_times()],
    }


def to_json(d: Diagnosis, method: str, url: str) -> dict[str, Any]:
    """The SPEC's keys (verdict, causes, events, ttfb_ms, ttfe_ms, gaps_ms, max_events_per_read, headers)
    for the browser-like request, then extras: the identity request's measures under ``identity``."""
    out: dict[str, Any] = {
        "verdict": d.verdict,
        "causes": [{"code": c.code, "message": c.message, "fix": c.fix, "severity": c.severity} for c in d.causes],
        **_measures_json(d.measures, d.browser),
        "url": url, "method": method,
        "identity": _measures_json(d.identity_measures, d.identity) if d.identity_measures else None,
    }
    return out
