"""Running sseproxy as a real process: start it, wait for its ready line, end it by its PID."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator

from helpers import WAIT


@contextlib.asynccontextmanager
async def sseproxy_process(*args: str, env: dict[str, str] | None = None, ready: str = "sseproxy listening on "
                           ) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """``python -m sseproxy ARGS``; yields the process and its base URL from the ready line."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sseproxy", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})})
    try:
        assert proc.stdout is not None
        line = ""
        while ready not in line:
            raw = await asyncio.wait_for(proc.stdout.readline(), 20)
            if not raw:
                err = await proc.stderr.read() if proc.stderr else b""
                raise AssertionError(f"sseproxy exited before it was ready: {err.decode()}")
            line = raw.decode()
        url = line.split(ready, 1)[1].split()[0]
        yield proc, url
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), WAIT * 2)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sseproxy", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})})
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def peak_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


async def read_lines_until(stream: asyncio.StreamReader, needle: str, limit: int = 200) -> list[str]:
    """Lines from ``stream`` up to and including the first that contains ``needle`` (bounded)."""
    lines: list[str] = []
    for _ in range(limit):
        line = (await asyncio.wait_for(stream.readline(), WAIT)).decode()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} not seen in {lines}")
