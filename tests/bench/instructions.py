"""Instructions the proxy executes per stream and per event, counted by valgrind's callgrind: a measure
that does not move with the machine's load, for telling a change of a few percent from noise.

    python tests/bench/instructions.py [--targets floor,sseproxy] [--compare PATH] [--shape NAME[,NAME]]

On a shared machine one run's CPU figures move by 10% and more; an instruction count repeats within
0.1%. It counts user space only (no kernel: the system calls every proxy makes alike), in the proxy's
process, for the streams of the measured part only: the proxy starts under callgrind with counting
off, serves a warm-up, and counting is switched on (``callgrind_control -i on``) for the measured
streams and dumped after them. Every target serves the same shapes against the same origin:

- ``open``: 200 streams at once, each on a new upstream connection, 20 events 50 ms apart: the
  1,000-stream scenario's shape, where each event comes in a read of its own;
- ``short``: 400 streams of 2 events, 20 at a time, on kept-alive upstream connections: what a
  stream costs to open and end;
- ``events``: 2 streams of 400 events 5 ms apart, one at a time: what one event costs alone.

``--compare PATH`` adds sseproxy as checked out at PATH (``git worktree add``), to compare two commits.
``--keep DIR`` keeps callgrind's dumps there, for ``callgrind_annotate`` (which C functions the
instructions ran in: the interpreter, httptools, uvloop, the regex engine).
Needs ``valgrind`` (Debian's package); all traffic is on 127.0.0.1; only processes it started are ended.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from procs import free_port, wait_listening

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
WAIT = 120.0  # seconds for any one read: the proxy runs many times slower under callgrind


@dataclass(frozen=True)
class Shape:
    name: str
    query: str        # the origin's /sse parameters
    warm: int         # warm-up streams at once (and so the upstream connections kept alive)
    at_once: int      # measured streams at once
    streams: int      # measured streams in all
    events: int


SHAPES = {
    "open": Shape("open", "n=20&interval=0.05&size=100", warm=10, at_once=200, streams=200, events=20),
    "short": Shape("short", "n=2&interval=0.001&size=100", warm=20, at_once=20, streams=400, events=2),
    "events": Shape("events", "n=400&interval=0.005&size=100", warm=1, at_once=1, streams=2, events=400),
}


async def one_stream(port: int, query: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET /sse?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode())
        got = b""
        while not got.endswith(b"0\r\n\r\n"):  # the last chunk: the stream ended
            data = await asyncio.wait_for(reader.read(65536), WAIT)
            if not data:
                raise RuntimeError(f"the stream ended early: {got[:200]!r}")
            got = got[-16:] + data
    finally:
        writer.close()


async def streams(port: int, shape: Shape, count: int, at_once: int) -> None:
    for _ in range(count // at_once):
        await asyncio.gather(*(one_stream(port, shape.query) for _ in range(at_once)))


def measure(cmd: list[str], port: int, shape: Shape, out_dir: Path, cwd: Path) -> int:
    """Instructions the proxy ran for the shape's measured streams."""
    out = out_dir / f"callgrind.{shape.name}.%p"
    env = {**os.environ, "PYTHONPATH": str(cwd)}  # this checkout's package, whatever the venv has installed
    proxy = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
                              *cmd], cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, 120)
        asyncio.run(streams(port, shape, 2 * shape.warm, shape.warm))
        subprocess.run(["callgrind_control", "-i", "on", str(proxy.pid)], check=True, capture_output=True)
        asyncio.run(streams(port, shape, shape.streams, shape.at_once))
        subprocess.run(["callgrind_control", "-d", str(proxy.pid)], check=True, capture_output=True)
    finally:
        proxy.terminate()
        try:
            proxy.wait(60)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait(10)
    dump = out_dir / f"callgrind.{shape.name}.{proxy.pid}.1"  # the measured part (".1": the first dump asked for)
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {dump}")


def command(target: str, root: Path, port: int, origin: int) -> list[str]:
    if target == "floor":
        return [sys.executable, str(HERE / "floor.py"), str(port), str(origin)]
    return [sys.executable, "-m", "sseproxy", "serve", "--listen", f"127.0.0.1:{port}",
            "--route", f"/=http://127.0.0.1:{origin}", "--log-level", "warning"]  # as run.py runs it


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default="floor,sseproxy")
    parser.add_argument("--compare", type=Path, help="another checkout of sseproxy, measured as 'compare'")
    parser.add_argument("--shape", default=",".join(SHAPES))
    parser.add_argument("--keep", type=Path, help="keep callgrind's dumps in this directory")
    args = parser.parse_args()
    targets = [(t, ROOT) for t in args.targets.split(",")]
    if args.compare is not None:
        targets.append(("compare", args.compare.resolve()))
    shapes = [SHAPES[s] for s in args.shape.split(",")]
    origin_port = free_port()
    origin = subprocess.Popen([sys.executable, str(HERE / "origin.py"), str(origin_port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    counts: dict[tuple[str, str], int] = {}
    try:
        wait_listening(origin_port)
        with contextlib.ExitStack() as stack:
            tmp = str(args.keep) if args.keep else stack.enter_context(
                tempfile.TemporaryDirectory(prefix="sseproxy-callgrind-"))
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
            for shape in shapes:
                for name, root in targets:
                    port = free_port()
                    counts[(name, shape.name)] = measure(command(name, root, port, origin_port), port, shape,
                                                         Path(tmp), root)
                    print(f"{shape.name:7s} {name:9s} {counts[(name, shape.name)] / shape.streams / 1000:10.1f} "
                          f"k instructions per stream", file=sys.stderr)
    finally:
        origin.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            origin.wait(10)
    print(report(counts, shapes, [t for t, _ in targets]))


def report(counts: dict[tuple[str, str], int], shapes: list[Shape], targets: list[str]) -> str:
    lines = ["| shape | target | k instructions per stream | the same per event | against floor |",
             "|---|---|---:|---:|---:|"]
    for shape in shapes:
        for target in targets:
            total = counts[(target, shape.name)]
            per_stream = total / shape.streams
            floor = counts.get(("floor", shape.name))
            ratio = f"{total / floor:.2f}x" if floor else "-"
            lines.append(f"| {shape.name} | {target} | {per_stream / 1000:,.1f} | "
                         f"{per_stream / shape.events / 1000:,.2f} k | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
