"""Issue 11's targets, each read off this run's figures for sseproxy (one process) and nginx."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from procs import idle_room
from scenarios import NAN, Bench, cell


@dataclass
class Goal:
    text: str
    scenario: str
    figure: str
    unit: str
    met: Callable[[float, float, dict[str, float]], bool]  # (sseproxy, nginx, sseproxy's figures)
    ratio: bool = True  # show sseproxy / nginx


def at_most(times: float) -> Callable[[float, float, dict[str, float]], bool]:
    return lambda s, n, f: s <= times * n


GOALS = [
    Goal("(a) added latency p50 ≤ 1.0x nginx, 1 stream", "latency1", "p50 ms", "ms", at_most(1.0)),
    Goal("(a) added latency p99 ≤ 1.0x nginx, 1 stream", "latency1", "p99 ms", "ms", at_most(1.0)),
    Goal("(b) added latency p50 ≤ 1.0x nginx, {fan} streams", "fanout200", "p50 ms", "ms", at_most(1.0)),
    Goal("(b) added latency p99 ≤ 1.0x nginx, {fan} streams", "fanout200", "p99 ms", "ms", at_most(1.0)),
    Goal("(c) {open:,} streams opened within 0.5 s: all open at once", "open1000", "open at once", "",
         lambda s, n, f: s >= f["of"], ratio=False),
    Goal("(c) time to first event p50 ≤ 2x nginx", "open1000", "TTFE p50 ms", "ms", at_most(2.0)),
    Goal("(c) added latency p99 ≤ 1.5x nginx", "open1000", "p99 ms", "ms", at_most(1.5)),
    Goal("(c) proxy CPU per event ≤ 1.5x nginx", "open1000", "CPU µs/event", "µs", at_most(1.5)),
    Goal("(d) throughput ≥ 1.0x nginx, one process", "throughput", "events/s", "events/s",
         lambda s, n, f: s >= n),
    Goal("(e) RSS per idle stream ≤ 16 KiB ({idle:,})", "idle1000", "RSS per stream KiB", "KiB",
         lambda s, n, f: s <= 16),
    Goal("(e) RSS per idle stream ≤ 16 KiB ({idles:,})", "idle10000", "RSS per stream KiB", "KiB",
         lambda s, n, f: s <= 16),
    Goal("(e) {idles:,} idle streams in one process, no errors", "idle10000", "errors", "errors",
         lambda s, n, f: s == 0 and f["held open"] >= f["streams"], ratio=False),
    Goal("(f) download ≥ 2x nginx", "download", "MB/s", "MB/s", lambda s, n, f: s >= 2 * n),
    Goal("(g) a client hang-up reaches the upstream within 0.2 s (max of {hang})", "hangup", "max ms", "ms",
         lambda s, n, f: s <= 200 and f.get("not seen", 0) == 0),
]


def summary(bench: Bench, subject: str = "sseproxy", reference: str = "nginx") -> str:
    out = ["### Issue 11's targets: sseproxy (one process) against nginx (one worker)", "",
           "| target | sseproxy | nginx | ratio | met |", "|---|---:|---:|---:|---|"]
    counts = {"fan": bench.scaled(200, 40), "open": bench.scaled(1000, 200), "idle": bench.scaled(1000, 200),
              "idles": idle_room(bench.scaled(10000, 2000)), "hang": 2 * bench.scaled(10, 3)}
    for goal in GOALS:
        goal = replace(goal, text=goal.text.format(**counts))
        runs = bench.results.get(goal.scenario)
        if runs is None:
            out.append(f"| {goal.text} | - | - | - | not run |")
            continue
        mine, theirs = runs.get(subject), runs.get(reference, {})
        if mine is None:
            out.append(f"| {goal.text} | failed | {cell(theirs.get(goal.figure, NAN))} | - | not measured |")
            continue
        s, n = mine.get(goal.figure, NAN), theirs.get(goal.figure, NAN)
        unit = f" {goal.unit}" if goal.unit and goal.unit != "errors" else ""
        ratio = f"{s / n:.2f}x" if goal.ratio and n and not math.isnan(n) and not math.isnan(s) else ""
        if math.isnan(s) or (math.isnan(n) and goal.ratio):
            verdict = "not measured"
        else:
            verdict = "met" if goal.met(s, n, mine) else "**NOT met**"
            if mine.get("errors") and goal.figure != "errors":
                verdict += f" ({cell(mine['errors'])} errors in this scenario)"
        if goal.scenario == "open1000" and goal.figure == "open at once":
            s_text = f"{cell(s)} of {cell(mine['of'])}"
        else:
            s_text = cell(s) + (unit if not math.isnan(s) else "")
        out.append(f"| {goal.text} | {s_text} | {cell(n) + unit if not math.isnan(n) else '-'} | {ratio} "
                   f"| {verdict} |")
    if bench.quick:
        out += ["", "--quick: the counts are about a fifth of the issue's (the scenario titles give them), so "
                    "these verdicts are a smoke test, not the issue's measurement."]
    return "\n".join(out) + "\n"
