"""The scenarios of issue 11's table, each run against every target in turn, and the table each prints.

Every scenario reports the proxy's CPU per event (its CPU seconds over the events the load client got);
a scenario that fails for one target prints the error in that target's row and the run goes on."""

from __future__ import annotations

import asyncio
import math
import statistics
import sys
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import load
import profiling
from procs import Service, cpu_seconds, idle_room, rss_bytes

MiB = 1024 * 1024
NAN = float("nan")
SETTLE = 5.0         # seconds to wait, at most, for the proxies to go quiet before a run
QUIET_WINDOW = 0.2   # seconds of CPU use looked at
QUIET_CPU = 0.02     # share of a CPU under which the proxies count as quiet


@dataclass
class Target:
    key: str  # what --targets names
    name: str  # what the tables show
    url: str
    service: Service | None = None  # None for direct

    def pids(self) -> list[int]:
        return self.service.pids() if self.service else []


@dataclass
class Bench:
    targets: list[Target]
    origin_url: str
    quick: bool
    profile: str | None = None
    profile_dir: Path | None = None
    pyspy: str | None = None
    helper_cpus: frozenset[int] | None = None
    repeat: int = 1  # runs of each scenario, the targets taking turns; the figures are their medians
    results: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # scenario -> target -> figures
    notes: list[str] = field(default_factory=list)

    def scaled(self, full: int, quick: int) -> int:
        return quick if self.quick else full


Body = Callable[[Bench, Target], Awaitable[tuple[load.Result, dict[str, float]]]]


@dataclass
class Scenario:
    key: str
    title: Callable[[Bench], str]
    body: Body
    lower: set[str]  # figures where lower is better
    timeout: float  # seconds, per target
    fresh: bool = False  # restart the proxy first, so memory freed by earlier scenarios is not reused
    per: str = "event"  # the unit the proxy's CPU is divided by


def percentile(values: list[float], q: float) -> float:
    if not values:
        return NAN
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency(result: load.Result) -> dict[str, float]:
    lat = [v / 1e6 for v in result.latencies_ns]
    return {"p50 ms": percentile(lat, 0.5), "p90 ms": percentile(lat, 0.9), "p99 ms": percentile(lat, 0.99),
            "max ms": max(lat) if lat else NAN}


def ttfe(result: load.Result) -> dict[str, float]:
    first = [v / 1e6 for v in result.ttfe_ns]
    return {"TTFE p50 ms": percentile(first, 0.5), "TTFE p99 ms": percentile(first, 0.99)}


async def one_stream(bench: Bench, t: Target) -> tuple[load.Result, dict[str, float]]:
    r = await load.streams(t.url, 1, 100, 0.01, 100)
    return r, {**latency(r), "TTFE p50 ms": ttfe(r)["TTFE p50 ms"]}


async def fan_out(bench: Bench, t: Target) -> tuple[load.Result, dict[str, float]]:
    r = await load.streams(t.url, bench.scaled(200, 40), 20, 0.05, 100)
    return r, {**latency(r), "TTFE p50 ms": ttfe(r)["TTFE p50 ms"], "events/s": r.events / r.seconds}


async def opening(bench: Bench, t: Target) -> tuple[load.Result, dict[str, float]]:
    count = bench.scaled(1000, 200)
    r = await load.streams(t.url, count, 20, 0.05, 100, spread=0.5)
    lat = latency(r)
    return r, {**ttfe(r), "open at once": r.open_peak, "of": count, "p50 ms": lat["p50 ms"],
               "p99 ms": lat["p99 ms"], "max ms": lat["max ms"]}


async def throughput(bench: Bench, t: Target) -> tuple[load.Result, dict[str, float]]:
    r = await load.flood(t.url, 10, 1.0 if bench.quick else 5.0, 100)
    return r, {"events/s": r.events / r.seconds, "MB/s": r.bytes / MiB / r.seconds, **latency(r)}


def idle(full: int, quick: int) -> Body:
    async def body(bench: Bench, t: Target) -> tuple[load.Result, dict[str, float]]:
        count = idle_room(bench.scaled(full, quick))  # at the descriptor limit the machine allows
        before = rss_bytes(t.pids())

        def at_peak() -> dict[str, float]:
            return {"rise": rss_bytes(t.pids()) - before if t.service else NAN}

        r = await load.idle(t.url, count, at_peak)
        per = r.extra["rise"] / 1024 / r.open_peak if r.open_peak else NAN  # over the streams really held
        return r, {"streams": count, "held open": r.open_peak, "open s": r.seconds, "RSS per stream KiB": per}
    return body


async def download(bench: Bench, t: Target) -> tuple[load.Result, dict[str, float]]:
    size = 256 * MiB  # the size, --quick too: it takes well under a second
    r = await load.download(t.url, size)
    r.events = r.bytes // MiB  # CPU is divided per MiB here: a download has no events
    return r, {"MB/s": r.bytes / MiB / r.seconds if r.seconds else NAN}


async def hangups(bench: Bench, t: Target) -> tuple[load.Result, dict[str, float]]:
    each = bench.scaled(10, 3)
    silent = await load.hangups(t.url, bench.origin_url, each, 0)
    live = await load.hangups(t.url, bench.origin_url, each, 0.05)
    both = load.Result(seconds=silent.seconds + live.seconds, events=silent.events + live.events,
                       errors=silent.errors + live.errors)
    for part in (silent, live):
        both.latencies_ns.extend(part.latencies_ns)
        for kind, n in part.error_kinds.items():
            both.error_kinds[kind] = both.error_kinds.get(kind, 0) + n
    figures = {"hang-ups": 2 * each, "p50 ms": latency(both)["p50 ms"], "max ms": latency(both)["max ms"],
               "silent p50 ms": latency(silent)["p50 ms"], "silent max ms": latency(silent)["max ms"],
               "live p50 ms": latency(live)["p50 ms"], "live max ms": latency(live)["max ms"],
               "not seen": both.error_kinds.get("not seen", 0)}
    return both, figures


PROFILED = {"sseproxy", "record", "resume"}  # the one-process targets --profile can attach py-spy to
UNRATIOED = {"errors", "of", "streams", "held open", "open at once", "hang-ups", "not seen"}
LAT = {"p50 ms", "p90 ms", "p99 ms", "max ms", "TTFE p50 ms", "TTFE p99 ms"}
SCENARIOS = [
    Scenario("latency1", lambda b: "(a) added latency, 1 stream, 100 events @ 10 ms", one_stream, LAT, 60),
    Scenario("fanout200", lambda b: f"(b) fan-out, {b.scaled(200, 40)} streams x 20 events @ 50 ms", fan_out,
             LAT, 120),
    Scenario("open1000", lambda b: f"(c) {b.scaled(1000, 200):,} streams opened within 0.5 s, 20 events @ 50 ms "
             "each", opening, LAT, 180),
    Scenario("throughput", lambda b: f"(d) throughput, 10 streams as fast as possible for {1 if b.quick else 5} s",
             throughput, LAT, 60),
    Scenario("idle1000", lambda b: f"(e) {b.scaled(1000, 200):,} idle open streams, fresh proxy",
             idle(1000, 200), {"open s", "RSS per stream KiB"}, 300, fresh=True),
    Scenario("idle10000", lambda b: f"(e) {idle_room(b.scaled(10000, 2000)):,} idle open streams, fresh proxy"
             + ("" if idle_room(b.scaled(10000, 2000)) == b.scaled(10000, 2000)
                else " (as many as the descriptor limit allows: 10,000 need about 20,100)"),
             idle(10000, 2000), {"open s", "RSS per stream KiB"}, 400, fresh=True),
    Scenario("download", lambda b: "(f) download, 256 MiB non-streamed", download, set(), 120,
             per="MiB"),
    Scenario("hangup", lambda b: f"(g) client hang-up reaching the upstream, {2 * b.scaled(10, 3)} hang-ups "
             "(half on a silent stream, half on one with an event every 50 ms)", hangups,
             LAT | {"silent p50 ms", "silent max ms", "live p50 ms", "live max ms", "not seen"}, 120,
             per="hang-up"),
]
NAMES = [s.key for s in SCENARIOS]


async def warm(t: Target) -> load.Result:
    """A fresh process's first requests pay for imports and first-call set-up; not what is measured."""
    return await asyncio.wait_for(load.streams(t.url, 10, 2, 0.01, 100), 60)


def cpu_figures(sc: Scenario, t: Target, cpu: float, events: int) -> dict[str, float]:
    if t.service is None:
        return {}
    per = cpu * 1e6 / events if events else NAN
    return {"proxy CPU s": cpu, f"CPU µs/{sc.per}": per}


async def run_one(bench: Bench, sc: Scenario, t: Target) -> tuple[dict[str, float], dict[str, int]]:
    if t.service is not None and (sc.fresh or not t.service.alive()):
        if not t.service.alive() and t.service.starts:
            bench.notes.append(f"{t.name} had exited before {sc.key}; restarted")
        await asyncio.to_thread(t.service.restart)
        if sc.fresh:
            await warm(t)
    pids = t.pids()
    recorder = None
    if bench.profile == sc.key and t.key in PROFILED and t.service and t.service.pid and bench.pyspy:
        assert bench.profile_dir is not None
        raw = bench.profile_dir / f"{sc.key}-{t.key}-{time.strftime('%Y%m%d-%H%M%S')}.raw.txt"
        recorder = profiling.Recorder(bench.pyspy, t.service.pid, raw, bench.helper_cpus)
        await asyncio.sleep(0.5)  # py-spy attaches
    cpu_before = cpu_seconds(pids)
    start = peak = rss_bytes(pids)
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_bytes(pids))
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    try:
        result, figures = await asyncio.wait_for(sc.body(bench, t), sc.timeout)
    finally:
        done.set()
        await sampler
        if recorder is not None:
            await asyncio.to_thread(recorder.stop)
            svg, listing, top = profiling.save(recorder.raw, sc.key)
            print(f"\nprofile of {t.name} in {sc.key}: {svg}\n  raw stacks: {recorder.raw}\n  top listing: "
                  f"{listing}\n{top}\n", file=sys.stderr)
            bench.notes.append(f"py-spy profile of {t.name} in {sc.key}: {svg}, {listing}\n\n```\n{top}\n```")
    if t.service is not None and not t.service.alive():
        tail = t.service.log.read_text(errors="replace")[-300:].strip() if t.service.log.exists() else ""
        bench.notes.append(f"{t.name} exited during {sc.key}; its log ends: {tail or '(empty)'}")
    cpu = cpu_seconds(pids) - cpu_before
    figures = {**figures, "errors": result.errors, **cpu_figures(sc, t, cpu, result.events)}
    if t.service is not None and sc.per == "event" and not sc.fresh:
        figures["RSS rise MiB"] = (peak - start) / MiB
    return figures, result.error_kinds


async def run(bench: Bench, sc: Scenario) -> str:
    """The scenario ``bench.repeat`` times, the targets taking turns in each round, so a quiet or busy
    moment of a shared machine falls on all of them alike; each figure is the median of the runs, and
    errors are their total."""
    title = sc.title(bench) + (f" (median of {bench.repeat} runs, the targets taking turns)" if bench.repeat > 1
                               else "")
    runs: dict[str, list[dict[str, float]]] = {t.key: [] for t in bench.targets}
    kinds: dict[str, Counter[str]] = {t.key: Counter() for t in bench.targets}
    failed: dict[str, str] = {}
    for _ in range(bench.repeat):
        for t in bench.targets:
            if t.key in failed:
                continue
            began = time.monotonic()
            await settle(bench, sc, t)
            try:
                figures, found = await run_one(bench, sc, t)
            except Exception as exc:
                message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                if isinstance(exc, TimeoutError):
                    message = f"timed out after {sc.timeout:.0f} s"
                failed[t.key] = message
                print(f"  {sc.key}: {t.name} FAILED: {message}", file=sys.stderr)
                traceback.print_exc(limit=3, file=sys.stderr)
                continue
            runs[t.key].append(figures)
            kinds[t.key].update(found)
            print(f"  {sc.key}: {t.name} done in {time.monotonic() - began:.1f} s", file=sys.stderr)
    rows: list[tuple[str, dict[str, float] | str, dict[str, int]]] = []
    for t in bench.targets:
        if t.key in failed:
            rows.append((t.name, f"failed: {failed[t.key]}", {}))
            continue
        figures = medians(runs[t.key])
        bench.results.setdefault(sc.key, {})[t.key] = figures
        rows.append((t.name, figures, dict(kinds[t.key])))
    return table(title, rows, sc.lower)


async def settle(bench: Bench, sc: Scenario, t: Target) -> None:
    """Wait (at most ``SETTLE`` s) until every proxy started is quiet: they share one CPU, and one still
    at work after its own run takes that CPU from the target measured next. A proxy still busy then
    (a resumable route's detached streams, read as fast as the origin sends until their ``detach``
    runs out) is restarted and warmed, and that is noted."""
    deadline = time.monotonic() + SETTLE
    while True:
        before = {other.key: cpu_seconds(other.pids()) for other in bench.targets if other.service}
        await asyncio.sleep(QUIET_WINDOW)
        shares = [(other, (cpu_seconds(other.pids()) - before[other.key]) / QUIET_WINDOW)
                  for other in bench.targets if other.key in before]
        loud = [(other, share) for other, share in shares if share >= QUIET_CPU]
        if not loud:
            return
        if time.monotonic() > deadline:
            break
    for other, share in loud:
        assert other.service is not None
        bench.notes.append(f"{sc.key}, before {t.name}: {other.name} was still using {share:.0%} of a CPU "
                           f"after {SETTLE:.0f} s; restarted")
        await asyncio.to_thread(other.service.restart)
        await warm(other)


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the runs (errors: their total), in the first run's order."""
    out: dict[str, float] = {}
    for key in runs[0]:
        values = [r[key] for r in runs if key in r and not math.isnan(r[key])]
        if key == "errors":
            out[key] = sum(values)
        else:
            out[key] = statistics.median(values) if values else NAN
    return out


def cell(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 or value == int(value) else f"{value:.2f}"


def table(title: str, rows: list[tuple[str, dict[str, float] | str, dict[str, int]]], lower: set[str]) -> str:
    columns: list[str] = []
    for _, figures, _ in rows:
        if isinstance(figures, dict):
            columns += [c for c in figures if c not in columns]
    done = {name: f for name, f, _ in rows if isinstance(f, dict)}
    out = [f"### {title}", "", "| target | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, figures, _ in rows:
        if isinstance(figures, str):
            out.append(f"| {name} | {figures} |" + " |" * (len(columns) - 1))
            continue
        cells = []
        for c in columns:
            v = figures.get(c, NAN)
            ratios = []
            for ref in ("nginx", "direct"):
                r = done.get(ref, {}).get(c, NAN)
                if ref != name and r and not math.isnan(r) and not math.isnan(v) and c not in UNRATIOED:
                    ratios.append(f"{v / r:.2f}x {ref}")
            cells.append(cell(v) + (f" ({', '.join(ratios)})" if ratios else ""))
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    if lower:
        out += ["", f"Lower is better for: {', '.join(sorted(lower))}, and the proxy's CPU and RSS figures; "
                    "higher for the rest."]
    kinds = [f"{name}: " + ", ".join(f"{k} x{n}" for k, n in k_.items()) for name, _, k_ in rows if k_]
    if kinds:
        out.append(f"Errors: {'; '.join(kinds)}.")
    out.append("")
    return "\n".join(out)
