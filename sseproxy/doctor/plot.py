"""``--plot``: a small self-contained SVG of events against time, drawn here (no plotting library, no
fonts or scripts from elsewhere). Each request is a staircase of its events, one dot per event, with
its reads marked as ticks on its own band below the axis: a stream climbs steadily, a batched one
stands still and then jumps."""

from __future__ import annotations

import math
from xml.sax.saxutils import escape

from .analysis import Diagnosis
from .timeline import Timeline

WIDTH, HEIGHT = 760, 340
LEFT, RIGHT, TOP, BOTTOM = 56, 20, 44, 96  # margins: the plot area is what is left
COLOURS = {"browser": "#d9480f", "identity": "#1971c2"}


def _nice_step(span: float, ticks: int = 6) -> float:
    raw = span / ticks if span > 0 else 1.0
    power = 10.0 ** math.floor(math.log10(raw))
    return next(float(m * power) for m in (1, 2, 5, 10) if m * power >= raw)


def _series(name: str, timeline: Timeline, x: float, y: float, span_ms: float, top: int, band: int) -> list[str]:
    colour = COLOURS[name]
    out: list[str] = [f'<g class="run" data-run="{name}">']
    points = [f"{LEFT:.1f},{HEIGHT - BOTTOM:.1f}"]
    count = 0
    dots: list[str] = []
    for read in timeline.reads:
        px = LEFT + read.t * 1000 * x
        if read.events:
            points.append(f"{px:.1f},{HEIGHT - BOTTOM - count * y:.1f}")
        for _ in range(read.events):
            count += 1
            dots.append(f'<circle class="event" data-run="{name}" cx="{px:.1f}" cy="{HEIGHT - BOTTOM - count * y:.1f}" '
                        f'r="2.5" fill="{colour}"/>')
        if read.events:
            points.append(f"{px:.1f},{HEIGHT - BOTTOM - count * y:.1f}")
    points.append(f"{LEFT + span_ms * x:.1f},{HEIGHT - BOTTOM - count * y:.1f}")
    out.append(f'<polyline points="{" ".join(points)}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
    out += dots
    base = HEIGHT - BOTTOM + top
    out.append(f'<text x="{LEFT - 6}" y="{base + band - 2}" text-anchor="end" font-size="10" fill="{colour}">'
               "reads</text>")
    for read in timeline.reads:
        px = LEFT + read.t * 1000 * x
        out.append(f'<line class="read" data-run="{name}" x1="{px:.1f}" x2="{px:.1f}" y1="{base}" y2="{base + band}" '
                   f'stroke="{colour}" stroke-width="1"/>')
    if timeline.head_at is not None:
        px = LEFT + timeline.head_at * 1000 * x
        out.append(f'<line class="head" data-run="{name}" x1="{px:.1f}" x2="{px:.1f}" y1="{TOP}" '
                   f'y2="{HEIGHT - BOTTOM}" stroke="{colour}" stroke-dasharray="3,3" stroke-width="1"/>')
    out.append("</g>")
    return out


def svg(d: Diagnosis, url: str) -> str:
    runs = [("browser", d.browser)] + ([("identity", d.identity)] if d.identity_measures and d.identity else [])
    span_ms = max((t.reads[-1].t * 1000 for _, t in runs if t.reads), default=0.0) or 1.0
    most = max(t.events for _, t in runs) or 1
    x = (WIDTH - LEFT - RIGHT) / span_ms
    y = (HEIGHT - TOP - BOTTOM) / most
    title = f"sseproxy doctor: {url}: {d.verdict}"
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
           f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif">',
           f"<title>{escape(title)}</title>",
           f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
           f'<text x="{LEFT}" y="20" font-size="13" font-weight="bold">{escape(title)}</text>']
    out += _axes(span_ms, most, x, y)
    for i, (name, timeline) in enumerate(runs):
        out += _series(name, timeline, x, y, span_ms, 24 + i * 18, 12)
        label = f"{'Accept-Encoding: ' + timeline.accept_encoding} ({timeline.events} events)"
        out.append(f'<text x="{LEFT + 8 + i * 300}" y="36" font-size="11" fill="{COLOURS[name]}">'
                   f"{escape(label)}</text>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _axes(span_ms: float, most: int, x: float, y: float) -> list[str]:
    bottom = HEIGHT - BOTTOM
    out = [f'<line x1="{LEFT}" y1="{bottom}" x2="{WIDTH - RIGHT}" y2="{bottom}" stroke="#333"/>',
           f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{bottom}" stroke="#333"/>',
           f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 8}" text-anchor="middle" font-size="11">'
           f"ms since the request</text>",
           f'<text x="14" y="{(TOP + bottom) / 2}" font-size="11" text-anchor="middle" '
           f'transform="rotate(-90 14 {(TOP + bottom) / 2})">events</text>']
    step = _nice_step(span_ms)
    tick = 0.0
    while tick <= span_ms + 1e-9:
        px = LEFT + tick * x
        out.append(f'<line x1="{px:.1f}" y1="{bottom}" x2="{px:.1f}" y2="{bottom + 4}" stroke="#333"/>')
        out.append(f'<text x="{px:.1f}" y="{bottom + 14}" text-anchor="middle" font-size="10" fill="#555">'
                   f"{tick:g}</text>")
        tick += step
    ystep = max(1, int(_nice_step(most, 4)))
    for n in range(0, most + 1, ystep):
        py = bottom - n * y
        out.append(f'<text x="{LEFT - 6}" y="{py + 3:.1f}" text-anchor="end" font-size="10" fill="#555">{n}</text>')
        out.append(f'<line x1="{LEFT}" y1="{py:.1f}" x2="{WIDTH - RIGHT}" y2="{py:.1f}" stroke="#eee"/>')
    return out

