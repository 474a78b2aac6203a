"""sseproxy side by side with direct (no proxy) and nginx, in one run on one machine.

    python tests/bench/run.py [--quick] [--out FILE]

Starts the origin, nginx (installed from Debian's package if missing: proxy_buffering off, HTTP/1.1
upstream with keep-alive, one worker process) and sseproxy with its defaults, with one and two workers,
all on 127.0.0.1; runs every scenario against each; prints a markdown table per scenario with each
figure and its ratio to nginx and to direct. Everything it starts, it stops, by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import load
import uvloop

HERE = Path(__file__).parent
NGINX_CONF = """daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 40000; }}
http {{
  access_log off;
  upstream origin {{ server 127.0.0.1:{origin}; keepalive 256; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_cache off;
      proxy_read_timeout 3600s;
    }}
  }}
}}
"""
MiB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def family(pid: int) -> list[int]:
    """The process and all its descendants (sseproxy --workers has children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in task.read_text().split()]
    return out


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for p in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for p in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


@dataclass
class Target:
    name: str
    url: str
    pid: int | None = None  # the proxy's process; None for direct

    def pids(self) -> list[int]:
        return family(self.pid) if self.pid else []


@dataclass
class Row:
    target: str
    figures: dict[str, float] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)  # error kinds, to tell a proxy fault from the bench's


@contextlib.contextmanager
def started(cmd: list[str], port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_listening(port)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def ensure_nginx() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found:
        return found
    # Install without letting the package start a system nginx: policy-rc.d refuses service starts.
    policy = Path("/usr/sbin/policy-rc.d")
    existed = policy.exists()
    if not existed:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "nginx-light"], check=True, env=env, timeout=600)
    finally:
        if not existed:
            policy.unlink()
    return "/usr/sbin/nginx"


async def measure(target: Target, run: Callable[[], object]) -> tuple[load.Result, float, int]:
    """Run one scenario; the proxy's CPU seconds, and how far its RSS rose above where the scenario
    found it (memory an earlier scenario left behind is not charged to this one)."""
    pids = target.pids()
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
        result = await run()  # type: ignore[misc]
    finally:
        done.set()
        await sampler
    return result, cpu_seconds(target.pids()) - cpu_before, peak - start


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency_figures(result: load.Result) -> dict[str, float]:
    lat = [v / 1e6 for v in result.latencies_ns]
    return {"p50 ms": percentile(lat, 0.5), "p90 ms": percentile(lat, 0.9), "p99 ms": percentile(lat, 0.99),
            "max ms": max(lat) if lat else float("nan"),
            "events/s": result.events / result.seconds if result.seconds else 0.0,
            "MB/s": result.bytes / MiB / result.seconds if result.seconds else 0.0,
            "TTFE p50 ms": statistics.median(result.ttfe_ns) / 1e6 if result.ttfe_ns else float("nan"),
            "errors": result.errors}


def table(title: str, rows: list[Row], lower_is_better: set[str]) -> str:
    columns = list(rows[0].figures)
    base = {r.target: r.figures for r in rows}
    out = [f"### {title}", "", "| target | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for row in rows:
        cells = []
        for c in columns:
            v = row.figures[c]
            text = "-" if v != v else (f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}")
            ratios = []
            for ref in ("nginx", "direct"):
                r = base.get(ref, {}).get(c)
                if ref != row.target and r and r == r and v == v and c not in ("errors",):
                    ratios.append(f"{v / r:.2f}x {ref}")
            cells.append(text + (f" ({', '.join(ratios)})" if ratios else ""))
        out.append(f"| {row.target} | " + " | ".join(cells) + " |")
    note = ", ".join(sorted(lower_is_better))
    out += ["", f"Lower is better for: {note}; higher for the rest. Ratios are to nginx and to direct."]
    kinds = [f"{r.target}: " + ", ".join(f"{k} x{n}" for k, n in r.kinds.items()) for r in rows if r.kinds]
    out += [f"Errors: {'; '.join(kinds)}." if kinds else "", ""]
    return "\n".join(out)


async def scenarios(targets: list[Target], quick: bool) -> str:
    scale = 0.2 if quick else 1.0
    parts = []

    async def latency_scenario(title: str, count: int, events: int, interval: float, size: int) -> None:
        rows = []
        for t in targets:
            result, cpu, peak = await measure(t, lambda t=t: load.streams(t.url, count, events, interval, size))
            rows.append(Row(t.name, {**latency_figures(result), "proxy CPU s": cpu if t.pid else float("nan"),
                                     "proxy RSS rise MiB": peak / MiB if t.pid else float("nan")},
                            result.error_kinds))
            print(f"  {title}: {t.name} done", file=sys.stderr)
        parts.append(table(title, rows, {"p50 ms", "p90 ms", "p99 ms", "max ms", "TTFE p50 ms", "proxy CPU s",
                                         "proxy RSS rise MiB"}))

    await latency_scenario("(a) 1 stream, 200 events at 10 ms", 1, 200, 0.01, 100)
    await latency_scenario("(b) 100 streams, 20 events of ~100 B at 50 ms", 100, 20, 0.05, 100)
    many = int(1000 * scale)
    await latency_scenario(f"(b) {many:,} streams, 20 events of ~100 B at 50 ms", many, 20, 0.05, 100)

    rows = []
    for t in targets:
        result, cpu, peak = await measure(t, lambda t=t: load.flood(t.url, 10, 5.0 * scale if quick else 5.0, 100))
        rows.append(Row(t.name, {**latency_figures(result), "proxy CPU s": cpu if t.pid else float("nan"),
                                 "proxy RSS rise MiB": peak / MiB if t.pid else float("nan")}, result.error_kinds))
        print(f"  (c): {t.name} done", file=sys.stderr)
    parts.append(table("(c) 10 streams as fast as possible for 5 s", rows,
                       {"p50 ms", "p90 ms", "p99 ms", "max ms", "TTFE p50 ms", "proxy CPU s", "proxy RSS rise MiB"}))

    for count in (int(1000 * scale), int(10000 * scale)):
        rows = []
        for t in targets:
            before = rss_bytes(t.pids())

            def at_peak(t: Target = t, before: int = before, count: int = count) -> dict[str, float]:
                return {"RSS per stream KiB": (rss_bytes(t.pids()) - before) / 1024 / count if t.pid else float("nan")}

            result = await load.idle(t.url, count, at_peak)
            rows.append(Row(t.name, {"open s": result.seconds, "RSS per stream KiB": result.extra["RSS per stream KiB"],
                                     "errors": result.errors}, result.error_kinds))
            print(f"  (d) {count}: {t.name} done", file=sys.stderr)
        parts.append(table(f"(d) {count:,} idle open streams", rows, {"open s", "RSS per stream KiB"}))

    rows = []
    size = (256 if quick else 1024) * MiB
    for t in targets:
        result, cpu, peak = await measure(t, lambda t=t: load.download(t.url, size))
        rows.append(Row(t.name, {"MB/s": result.bytes / MiB / result.seconds, "errors": result.errors,
                                 "proxy CPU s": cpu if t.pid else float("nan"),
                                 "proxy RSS rise MiB": peak / MiB if t.pid else float("nan")}, result.error_kinds))
        print(f"  (e): {t.name} done", file=sys.stderr)
    parts.append(table(f"(e) one {size // MiB:,} MiB non-streamed download", rows, {"proxy CPU s",
                                                                                 "proxy RSS rise MiB"}))
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a fifth of the counts and sizes, for a smoke run")
    parser.add_argument("--out", help="also write the tables to this file")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (65536, max(hard, 65536)))  # 10,000 streams need ~3 fds each
    nginx = ensure_nginx()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ports = {name: free_port() for name in ("origin", "nginx", "sseproxy", "sseproxy2")}
        (work / "nginx.conf").write_text(NGINX_CONF.format(prefix=work, origin=ports["origin"], port=ports["nginx"]))
        py = sys.executable
        origin_url = f"http://127.0.0.1:{ports['origin']}"
        with started([py, str(HERE / "origin.py"), str(ports["origin"])], ports["origin"], work / "origin.log") as o, \
                started([nginx, "-p", str(work), "-c", str(work / "nginx.conf"), "-e", "stderr"], ports["nginx"],
                        work / "nginx.log") as n, \
                started([py, "-m", "sseproxy", "serve", "--listen", f"127.0.0.1:{ports['sseproxy']}",
                         "--route", f"/={origin_url}", "--log-level", "warning"], ports["sseproxy"],
                        work / "sseproxy.log") as s1, \
                started([py, "-m", "sseproxy", "serve", "--workers", "2", "--listen",
                         f"127.0.0.1:{ports['sseproxy2']}", "--route", f"/={origin_url}", "--log-level", "warning"],
                        ports["sseproxy2"], work / "sseproxy2.log") as s2:
            del o
            targets = [Target("direct", origin_url), Target("nginx", f"http://127.0.0.1:{ports['nginx']}", n.pid),
                       Target("sseproxy", f"http://127.0.0.1:{ports['sseproxy']}", s1.pid),
                       Target("sseproxy --workers 2", f"http://127.0.0.1:{ports['sseproxy2']}", s2.pid)]
            uvloop.install()
            report = asyncio.run(scenarios(targets, args.quick))
    nginx_version = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr.strip()
    header = (f"sseproxy benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, "
              f"Python {sys.version.split()[0]}, {nginx_version}{' (--quick)' if args.quick else ''}\n\n")
    print(header + report)
    if args.out:
        Path(args.out).write_text(header + report)


if __name__ == "__main__":
    main()
