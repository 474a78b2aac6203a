"""The doctor's judgement, with no I/O: from the two recordings (one asked as a browser asks, one
with identity) a verdict and each cause found, with the evidence and the fix.

Verdicts: ``streams``, ``buffered`` (events held back and released together), ``not_a_stream`` and
``error`` (nothing could be measured). A cause is a ``problem`` (it explains the batching), a
``warning`` (a risk that does not batch this stream here) or an ``error``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..framing import StreamKind
from . import fixes
from .measures import Measures, measure
from .timeline import Timeline


@dataclass(frozen=True)
class Cause:
    code: str  # stable: scripts may match on it
    severity: str  # problem, warning or error
    message: str  # what was seen: the header, or the timings
    fix: str


@dataclass(frozen=True)
class Diagnosis:
    verdict: str
    causes: tuple[Cause, ...]
    browser: Timeline
    identity: Timeline | None
    measures: Measures | None  # of the browser-like request, what a page sees; None without a response
    identity_measures: Measures | None


def ms(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0 ms"
    if value >= 10_000:
        return f"{value / 1000:.1f} s"
    return f"{value:.1f} ms" if value < 10 else f"{value:,.0f} ms"


def _cause(code: str, severity: str, message: str) -> Cause:
    return Cause(code, severity, message, fixes.FIXES[code])


def _error(browser: Timeline, identity: Timeline | None, code: str, message: str,
           m: Measures | None = None, extra: tuple[Cause, ...] = ()) -> Diagnosis:
    return Diagnosis("error", (_cause(code, "error", message), *extra), browser, identity, m, None)


def diagnose(browser: Timeline, identity: Timeline | None, timeout: float) -> Diagnosis:
    """The verdict and causes. ``identity`` is the same request with Accept-Encoding: identity, or None
    where it was not made; ``timeout`` is how long each request was followed."""
    if browser.failure is not None:
        return _error(browser, identity, browser.failure.code, browser.failure.message)
    m = measure(browser)
    status = browser.status or 0
    if 300 <= status < 400:
        where = browser.header("Location") or "none"
        return _error(browser, identity, "redirect", f"The server answered {status} {browser.reason} "
                      f"(Location: {where}).", m)
    if not 200 <= status < 300:
        return _error(browser, identity, "http_error", f"The server answered {status} {browser.reason}.", m)
    if browser.kind not in (StreamKind.SSE, StreamKind.LINES):
        ctype = f"Content-Type: {browser.header('Content-Type')}" if browser.header("Content-Type") else \
            "no Content-Type"
        message = (f"The response has {ctype}, not an event stream or NDJSON: one body of {browser.body_bytes:,} "
                   f"bytes, complete after {ms(m.duration_ms)}.")
        return Diagnosis("not_a_stream", (_cause("not_a_stream", "problem", message),), browser, identity, m, None)
    usable = identity is not None and identity.failure is None and 200 <= (identity.status or 0) < 300
    im = measure(identity) if usable and identity is not None else None
    causes = stream_causes(m, im)
    if m.events == 0 and not _held(m, im):
        seen = f"sent no whole event in {timeout:g} s" if m.ended == "timeout" else "ended without a whole event"
        message = f"The stream ({m.headers.get('content-type')}) {seen}, so there is nothing to time."
        warnings = tuple(c for c in causes if c.severity == "warning")
        return _error(browser, identity, "no_events", message, m, warnings)
    verdict = "buffered" if any(c.severity == "problem" for c in causes) else "streams"
    return Diagnosis(verdict, tuple(causes), browser, identity, m, im)


def _held(m: Measures, im: Measures | None) -> bool:
    """No event at all before the doctor stopped, while the identity request got some: held past the
    timeout, the extreme of batching."""
    return m.events == 0 and m.ended == "timeout" and im is not None and im.events > 0


def _encoding(m: Measures | None) -> str | None:
    value = m.headers.get("content-encoding", "").strip().lower() if m else ""
    return value if value not in ("", "identity", "none") else None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def clumped(m: Measures) -> str:
    """How a batched request's events arrived, in words: the evidence."""
    if m.events == 0:
        return "no event arrived " + ("before the doctor stopped listening" if m.ended == "timeout"
                                      else "before the stream ended")
    biggest = max(m.bursts, key=lambda b: b.events)
    what = f"all {m.events} events" if biggest.events == m.events else _plural(biggest.events, "event")
    what += f" in {_plural(biggest.reads, 'read')}"
    rest = "" if biggest.events == m.events else f" ({m.burst_events} of {m.events} events came in bursts)"
    if m.bursts[0] is biggest and m.head_ms is not None and biggest.t * 1000 - m.head_ms >= 1:
        return (f"the headers came after {ms(m.head_ms)}, then nothing for {ms(biggest.t * 1000 - m.head_ms)}, "
                f"then {what}{rest}")
    return f"after {ms(biggest.silence * 1000)} without an event came {what}{rest}"


def _summary(m: Measures) -> str:
    if not m.bursts:
        return "no event"
    biggest = max(m.bursts, key=lambda b: b.events)
    return (f"{biggest.events} of {_plural(m.events, 'event')} in {_plural(biggest.reads, 'read')} after "
            f"{ms(biggest.silence * 1000)} without one")


def spread(m: Measures) -> str:
    """How a streaming request's events arrived, in words."""
    gap = f"gap p50 {ms(m.gaps_ms.p50)}, " if m.gaps_ms else ""
    return f"its {_plural(m.events, 'event')} arrived one by one ({gap}at most {m.max_events_per_read} per read)"


def stream_causes(m: Measures, im: Measures | None) -> list[Cause]:
    """The causes for a response that is a stream; ``im`` measures the identity request, if usable."""
    causes: list[Cause] = []
    batched = m.batched or _held(m, im)
    enc, ienc = _encoding(m), _encoding(im)
    identity_batched = im is not None and (im.batched or (im.events == 0 and im.ended == "timeout"))
    if enc and batched and not (identity_batched and not ienc):
        message = f"Asked with Accept-Encoding: {m.accept_encoding}, the response came Content-Encoding: {enc}, " \
                  f"and {clumped(m)}."
        if im is not None and not identity_batched and im.events:
            message += f" Asked for identity, {spread(im)}: the stream batches only when compression is accepted."
        elif ienc:
            message += f" Asked for identity, it still came Content-Encoding: {ienc}."
        causes.append(_cause("compression", "problem", message))
    elif enc:
        how = clumped(m) if batched else spread(m)
        causes.append(_cause("content_encoding", "warning", f"The stream is sent Content-Encoding: {enc}, and "
                             f"{how}. That relies on every hop flushing compressed data, which many proxies and "
                             "CDNs do not."))
    length = m.headers.get("content-length")
    if length is not None:
        ctype = m.headers.get("content-type", "")
        if batched:
            message = (f"Content-Length: {length} on a {ctype} stream: the body was sized, so complete, before its "
                       f"first byte was sent; {clumped(m)}.")
            causes.append(_cause("content_length", "problem", message))
        else:
            causes.append(_cause("content_length", "warning", f"Content-Length: {length} on a {ctype} stream: "
                                 "proxies take it for a complete body they may wait for."))
    if batched and not any(c.severity == "problem" for c in causes):
        causes.append(_cause("buffering_intermediary", "problem", _intermediary(m, im)))
    cache = m.headers.get("cache-control")
    if cache is None or "no-transform" not in cache.lower():
        seen = f"Cache-Control: {cache} lacks no-transform" if cache else "There is no Cache-Control header"
        causes.append(_cause("no_transform_missing", "warning", f"{seen}, so compressing middlewares, proxies and "
                             "CDNs may compress or buffer the stream."))
    if m.ended == "closed":
        causes.append(_cause("truncated", "warning", f"The connection closed after {ms(m.duration_ms)} before the "
                             "stream's proper end (no final chunk)."))
    if 0 < m.events < 3 and not batched:
        causes.append(_cause("few_events", "warning", f"Only {_plural(m.events, 'event')} arrived: too few to "
                             "judge how the stream is paced."))
    return causes


def _intermediary(m: Measures, im: Measures | None) -> str:
    via = "; ".join(f"{k.title()}: {v}" for k, v in m.headers.items() if k in ("server", "via", "x-cache"))
    tail = f" ({via})" if via else ""
    if im is not None and (im.batched or im.events == 0):
        return (f"{_sentence(clumped(m))}; asked for identity, the same ({_summary(im)}). Neither compression "
                f"nor a Content-Length explains it, so something between the events' source and here holds the "
                f"body back{tail}.")
    if im is not None:
        return (f"Asked with Accept-Encoding: {m.accept_encoding}, {clumped(m)}, while asked for identity, "
                f"{spread(im)}: something holds the body back some of the time{tail}.")
    return f"{_sentence(clumped(m))}. Nothing in the headers explains it, so something holds the body back{tail}."


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]
