"""The processes the benchmark starts: pinned to a CPU, stopped by PID, restarted when a scenario wants a
fresh one; and what /proc says about them (CPU seconds, RSS)."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

WANTED_FDS = 65536
OWN_FDS = 100  # what a proxy holds besides its streams' sockets (sseproxy about 15 at rest; room for more)
NEEDED_FDS = 20_100  # 10,000 idle streams through one proxy: one client and one upstream socket each, and a few


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
    """The process and all its descendants (nginx's worker, sseproxy --workers' children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in task.read_text().split()]
    return out


def cpu_seconds(pids: list[int]) -> float:
    """CPU time of the processes' live threads, in ns from schedstat: /proc/PID/stat counts clock ticks
    of 10 ms, too coarse for a scenario that costs the proxy 30 ms. Falls back to the ticks."""
    total_ns = 0
    ticks = 0
    for p in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        for task in Path(f"/proc/{p}/task").glob("*/schedstat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                total_ns += int(task.read_text().split()[0])
    return total_ns / 1e9 if total_ns else ticks / os.sysconf("SC_CLK_TCK")


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for p in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


@dataclass(frozen=True)
class Pinning:
    """Which CPUs the proxies get and which the origin and the load client (this process) get."""

    proxy: frozenset[int] | None
    rest: frozenset[int] | None
    note: str

    @classmethod
    def choose(cls, enabled: bool = True) -> Pinning:
        cpus = sorted(os.sched_getaffinity(0))
        if not enabled:
            return cls(None, None, "not pinned (--no-pin)")
        if len(cpus) < 2:
            return cls(None, None, f"not pinned: only CPU {cpus[0]} is available, everything shares it")
        proxy, rest = frozenset({cpus[0]}), frozenset({cpus[1]})
        return cls(proxy, rest, f"each proxy pinned to CPU {cpus[0]}; the origin and the load client to CPU "
                                f"{cpus[1]} (sseproxy --workers 2 shares its one CPU between its workers)")

    def pin_self(self) -> None:
        if self.rest is not None:
            os.sched_setaffinity(0, self.rest)


def idle_room(wanted: int) -> int:
    """Idle streams one proxy can hold at this process's descriptor limit (children inherit it): two
    descriptors a stream, less what a proxy holds of its own. ``wanted`` where the limit allows it."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(0, min(wanted, (soft - OWN_FDS) // 2))


def raise_fd_limit() -> str:
    """Raise this process's descriptor limit (children inherit it) and say what it is."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    before = f"was {soft:,} soft / {hard:,} hard"
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (WANTED_FDS, max(hard, WANTED_FDS)))
    except (ValueError, OSError):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    told = f"descriptor limit {soft:,} soft / {hard:,} hard ({before}; every process started inherits it)"
    if soft >= NEEDED_FDS:
        return told
    return (f"{told}. 10,000 idle streams through one proxy need about {NEEDED_FDS:,} descriptors in it "
            f"(one per client connection, one per upstream connection, a few more); raising the hard limit needs "
            f"CAP_SYS_RESOURCE, which this process lacks, so errors in the 10,000 scenario at this limit are the "
            f"machine's, not the proxy's")


@dataclass
class Service:
    """One process the bench owns; only ever signalled by its own PID."""

    name: str
    cmd: list[str]
    port: int
    log: Path
    cpus: frozenset[int] | None
    cwd: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    starts: int = field(default=0)

    def start(self) -> None:
        cpus = self.cpus

        def pin() -> None:  # in the child before exec, so its own children inherit the CPU
            if cpus is not None:
                os.sched_setaffinity(0, cpus)

        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, cwd=self.cwd,
                                         preexec_fn=pin)
        self.starts += 1
        try:
            wait_listening(self.port)
        except RuntimeError:
            self.stop()
            raise RuntimeError(f"{self.name} did not start listening; its log: {self.log}") from None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def pids(self) -> list[int]:
        return family(self.proc.pid) if self.alive() and self.proc else []
