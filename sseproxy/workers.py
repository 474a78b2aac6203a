"""``--workers N``: N processes serving one port with SO_REUSEPORT, under one supervisor.

The supervisor validates nothing itself (the CLI has already loaded the config) and serves nothing:
it picks the port, starts the workers with a shared prometheus-client multiprocess directory so
that any worker's ``/metrics`` counts all of them, prints one ready line, copies the workers' stdout
(``--tap``) to its own line by line (cutting overlong lines, never stopping), forwards SIGTERM, SIGINT
and SIGHUP to every worker, and exits with the worst exit status once all have ended.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Sequence

from .addresses import parse_listen

READY = "sseproxy listening on "
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
MAX_LINE = 16 * 1024   # bounds the part of one worker output line the supervisor keeps and prints
READ_SIZE = 64 * 1024  # bounds one read of a worker's output


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound, not listening SO_REUSEPORT socket: fixes the port (also for port 0) for the workers."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


class LineCopier:
    """Splits a worker's output into lines for ``out``, whatever their length: a line over
    ``MAX_LINE`` bytes is cut there and marked, and the rest of it is counted, not kept.

    ``StreamReader.readline`` cannot do this: a line over its 64 KiB limit raises, the copy stops, the
    pipe fills, and the worker then blocks on its next write to stdout, its whole event loop with it.
    """

    def __init__(self, out: Callable[[str], None]):
        self._out = out
        self._line = bytearray()  # bounded by MAX_LINE: the start of the current line
        self._cut = 0             # bytes of the current line dropped past MAX_LINE

    def feed(self, data: bytes) -> None:
        start = 0
        while (end := data.find(b"\n", start)) != -1:
            self._take(data[start:end])
            self._emit()
            start = end + 1
        self._take(data[start:])

    def close(self) -> None:
        if self._line or self._cut:
            self._emit()

    def _take(self, piece: bytes) -> None:
        room = MAX_LINE - len(self._line)
        self._line += piece[:room]
        self._cut += max(0, len(piece) - room)

    def _emit(self) -> None:
        text = self._line.decode(errors="replace").rstrip("\r")
        if self._cut:
            text += f" …[{self._cut} bytes cut]"
        self._line.clear()
        self._cut = 0
        self._out(text)


async def _copy(stream: asyncio.StreamReader, out: Callable[[str], None]) -> None:
    """Copy until the worker closes its stdout; never stops reading before that."""
    copier = LineCopier(out)
    while chunk := await stream.read(READ_SIZE):
        copier.feed(chunk)
    copier.close()


async def supervise(worker_args: Sequence[str], listen: str, count: int, announce: Callable[[str], None]) -> int:
    """Run ``count`` workers of ``sseproxy serve WORKER_ARGS`` on ``listen``; their worst exit status."""
    host, port = parse_listen(listen)
    reserved = reserve_port(host, port)
    port = reserved.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    metrics_dir = tempfile.mkdtemp(prefix="sseproxy-metrics-")
    env = {**os.environ, MULTIPROC_ENV: metrics_dir}
    procs: list[asyncio.subprocess.Process] = []
    copies: list[asyncio.Task[None]] = []
    loop = asyncio.get_running_loop()

    def forward(sig: signal.Signals) -> None:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(sig)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, forward, sig)
    try:
        for _ in range(count):
            procs.append(await asyncio.create_subprocess_exec(
                sys.executable, "-m", "sseproxy", "serve", *worker_args, "--listen", f"{shown}:{port}",
                "--reuse-port", stdout=asyncio.subprocess.PIPE, env=env))
        ready = ""
        for proc in procs:
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
            if not line.startswith(READY):
                forward(signal.SIGTERM)
                return await _wait_all(procs) or 1
            ready = line.strip()
        reserved.close()
        announce(f"{ready} ({count} workers)")
        copies = [asyncio.create_task(_copy(p.stdout, announce)) for p in procs if p.stdout is not None]
        return await _wait_all(procs)
    finally:
        reserved.close()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        forward(signal.SIGTERM)
        await _wait_all(procs)
        for task in copies:
            task.cancel()
        shutil.rmtree(metrics_dir, ignore_errors=True)


async def _wait_all(procs: list[asyncio.subprocess.Process]) -> int:
    codes = [await proc.wait() for proc in procs]
    return max((abs(c) for c in codes), default=0)

