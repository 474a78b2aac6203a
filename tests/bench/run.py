"""sseproxy side by side with direct (no proxy) and nginx, in one run on one machine: issue 11's table.

    python tests/bench/run.py [--quick] [--only NAME[,NAME]] [--targets direct,nginx,floor,sseproxy,workers]
                              [--repeat N] [--profile SCENARIO] [--out FILE] [--no-pin]

Starts the origin, nginx (installed from Debian's package if missing: proxy_buffering off, HTTP/1.1
upstream with keep-alive, one worker process) and sseproxy at its defaults, in one process and with
--workers 2, all on 127.0.0.1. Each proxy is pinned to the first CPU, the origin and this process (the
load client) to the second. Runs every scenario against each target; prints a markdown table per scenario
with each figure and its ratio to nginx and to direct, then issue 11's targets with sseproxy's figure,
nginx's, the ratio and whether it is met. Everything it starts, it stops, by PID.

--targets floor adds the least a Python relay on uvloop can do (floor.py: bytes from one socket to the
other, parsing nothing), to read sseproxy against what any Python proxy pays here. --repeat N runs each
scenario N times, the targets taking turns, and reports each figure's median: on a shared machine one
run's tail figures (p99, max) move by several times from run to run, nginx's too.

Scenarios (--only, --profile): latency1, fanout200, open1000, throughput, idle1000, idle10000,
download, hangup. --profile runs py-spy on each one-process sseproxy target (sseproxy, record, resume)
during that scenario and writes the flame graph (SVG), the raw stacks and a top listing under
tests/bench/profiles/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import aiohttp
import procs
import profiling
import scenarios
import summary
import uvloop

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
TARGETS = ["direct", "nginx", "floor", "sseproxy", "workers", "record", "resume"]
# Features measured side by side with plain sseproxy (run only when named in --targets): the same
# one-process proxy with its route recording every exchange, or resumable (memory store).
FEATURE_ROUTES = {"record": {"record": "{work}/recordings"}, "resume": {"resume": True}}
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


def names(text: str, allowed: list[str], what: str) -> list[str]:
    chosen = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in allowed]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (choose from {', '.join(allowed)})")
    return chosen


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="about a fifth of the counts and sizes, a smoke run")
    parser.add_argument("--only", default=",".join(scenarios.NAMES), help="scenarios to run, comma-separated")
    parser.add_argument("--targets", default="direct,nginx,sseproxy,workers",
                        help=f"targets to run, comma-separated, of {','.join(TARGETS)}")
    parser.add_argument("--profile", metavar="SCENARIO", help="py-spy the one-process targets in this scenario")
    parser.add_argument("--profile-dir", default=str(HERE / "profiles"), help="where --profile writes")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--out", help="also write the report to this file")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="run each scenario N times, the targets taking turns, and report the medians")
    args = parser.parse_args()
    args.only = names(args.only, scenarios.NAMES, "scenario")
    args.targets = names(args.targets, TARGETS, "target")
    if args.profile:
        names(args.profile, scenarios.NAMES, "scenario")
        if args.profile not in args.only:
            args.only.append(args.profile)
        if not scenarios.PROFILED & set(args.targets):
            raise SystemExit(f"--profile needs one of the targets {', '.join(sorted(scenarios.PROFILED))}")
    return args


def version(cmd: list[str]) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=ROOT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"? ({exc})"
    return (done.stdout + done.stderr).strip()


def services(args: argparse.Namespace, work: Path, pin: procs.Pinning, nginx: str | None
             ) -> tuple[procs.Service, list[scenarios.Target]]:
    py = sys.executable
    ports = {name: procs.free_port() for name in ["origin", *TARGETS]}
    origin_url = f"http://127.0.0.1:{ports['origin']}"
    origin = procs.Service("origin", [py, str(HERE / "origin.py"), str(ports["origin"])], ports["origin"],
                           work / "origin.log", pin.rest)
    sse = [py, "-m", "sseproxy", "serve", "--route", f"/={origin_url}", "--log-level", "warning", "--listen"]
    commands = {
        "nginx": [nginx or "nginx", "-p", str(work), "-c", str(work / "nginx.conf"), "-e", "stderr"],
        "sseproxy": [*sse, f"127.0.0.1:{ports['sseproxy']}"],
        "workers": [*sse, f"127.0.0.1:{ports['workers']}", "--workers", "2"],
        "floor": [py, str(HERE / "floor.py"), str(ports["floor"]), str(ports["origin"])],
    }
    for key, extra in FEATURE_ROUTES.items():
        route = {"path": "/", "upstream": origin_url,
                 **{k: v.format(work=work) if isinstance(v, str) else v for k, v in extra.items()}}
        config = work / f"{key}.yaml"  # JSON is YAML
        config.write_text(json.dumps({"listen": f"127.0.0.1:{ports[key]}", "routes": [route]}))
        commands[key] = [py, "-m", "sseproxy", "serve", "--config", str(config), "--log-level", "warning"]
    (work / "nginx.conf").write_text(NGINX_CONF.format(prefix=work, origin=ports["origin"], port=ports["nginx"]))
    shown = {"direct": "direct", "nginx": "nginx", "floor": "floor (Python relay, parses nothing)",
             "sseproxy": "sseproxy", "workers": "sseproxy --workers 2",
             "record": "sseproxy, route recording", "resume": "sseproxy, route resumable"}
    targets = []
    for key in args.targets:
        url = origin_url if key == "direct" else f"http://127.0.0.1:{ports[key]}"
        service = None if key == "direct" else procs.Service(key, commands[key], ports[key], work / f"{key}.log",
                                                              pin.proxy, cwd=ROOT)
        targets.append(scenarios.Target(key, shown[key], url, service))
    return origin, targets


async def run_all(bench: scenarios.Bench, only: list[str]) -> str:
    """Every chosen scenario in the table's order, after a warm-up: the figures are for a proxy that has
    served a stream before, and the warm-up's own first stream is noted."""
    for t in bench.targets:
        try:
            first = await scenarios.warm(t)
            bench.notes.append(f"warm-up, 10 short streams before the first scenario: {t.name}'s slowest time to "
                               f"first event {max(first.ttfe_ns, default=0) / 1e6:.1f} ms, {first.errors} errors")
        except Exception as exc:
            bench.notes.append(f"warm-up of {t.name} failed: {type(exc).__name__}: {exc}")
    parts = []
    for sc in scenarios.SCENARIOS:
        if sc.key in only:
            print(f"{sc.key} ...", file=sys.stderr)
            parts.append(await scenarios.run(bench, sc))
    return "\n".join(parts)


def header(args: argparse.Namespace, pin: procs.Pinning, fds: str, nginx: str | None, load_before: str) -> str:
    commit = version(["git", "log", "-1", "--format=%h %s"])
    commit = commit if len(commit) <= 90 else commit[:88] + ".."
    dirty = " (with uncommitted changes)" if version(["git", "status", "--porcelain", "--", "sseproxy"]) else ""
    source = version([sys.executable, "-c", "import sseproxy; print(sseproxy.__file__)"])
    lines = [
        f"sseproxy benchmark, {time.strftime('%Y-%m-%d %H:%M')}{' (--quick)' if args.quick else ''}",
        "",
        f"- machine: {os.cpu_count()} CPUs; load average at the start {load_before}, at the end "
        f"{Path('/proc/loadavg').read_text().split(' ', 3)[:3]} (a shared machine makes every figure noisy)",
        f"- pinning: {pin.note}",
        f"- {fds}",
        f"- Python {sys.version.split()[0]}, aiohttp {aiohttp.__version__}, uvloop {metadata.version('uvloop')}, "
        f"{version([nginx, '-v']) if nginx else 'no nginx'}",
        f"- sseproxy from {source}, at {commit}{dirty}",
        f"- targets: {', '.join(args.targets)}; scenarios: {', '.join(args.only)}",
        f"- command: {' '.join([Path(sys.executable).name, *sys.argv])}",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    args = parse()
    load_before = str(Path("/proc/loadavg").read_text().split(" ", 3)[:3])
    fds = procs.raise_fd_limit()
    pin = procs.Pinning.choose(not args.no_pin)
    pin.pin_self()
    nginx = ensure_nginx() if "nginx" in args.targets else None
    pyspy = None
    if args.profile:
        pyspy = profiling.ensure_pyspy()
        Path(args.profile_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        origin, targets = services(args, work, pin, nginx)
        started = [origin, *(t.service for t in targets if t.service)]
        bench = scenarios.Bench(targets, f"http://127.0.0.1:{origin.port}", args.quick, args.profile,
                                Path(args.profile_dir), pyspy, pin.rest, max(1, args.repeat))
        try:
            for service in started:
                try:
                    service.start()
                except RuntimeError as exc:
                    bench.notes.append(str(exc))  # scenarios retry it and report the failure per row
                    print(exc, file=sys.stderr)
            uvloop.install()
            report = asyncio.run(run_all(bench, args.only))
        finally:
            for service in reversed(started):
                service.stop()
    text = header(args, pin, fds, nginx, load_before) + report + "\n" + summary.summary(bench)
    if bench.notes:
        text += "\nNotes:\n" + "\n".join(f"- {n}" for n in bench.notes) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
