"""A real redis-server (Debian's package) on a free port, persistence off, in a temporary directory,
stopped by its pid. Outside CI a missing redis-server skips with the reason; with CI=true it fails,
because .ci/run installs it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import WAIT, free_port


def redis_server_path() -> str:
    path = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server")
                                            else None)
    if path is None:
        reason = "redis-server is not installed (Debian: apt-get install redis-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI installs it: see .ci/run)")
        pytest.skip(reason)
    return path


@dataclass
class RedisServer:
    url: str
    process: asyncio.subprocess.Process

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()  # by its pid: this process only
            try:
                await asyncio.wait_for(self.process.wait(), WAIT)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


@contextlib.asynccontextmanager
async def redis_server(directory: Path) -> AsyncIterator[RedisServer]:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        redis_server_path(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--dir", str(directory), "--protected-mode", "yes", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    server = RedisServer(f"redis://127.0.0.1:{port}/0", process)
    try:
        assert process.stdout is not None
        seen = []
        while True:  # its own "ready" line is the gate
            line = (await asyncio.wait_for(process.stdout.readline(), WAIT)).decode()
            seen.append(line)
            if not line:
                raise AssertionError(f"redis-server exited: {''.join(seen)}")
            if "Ready to accept connections" in line:
                break
        drain = asyncio.create_task(process.stdout.read())  # keeps its pipe from filling
        yield server
    finally:
        await server.stop()
        if "drain" in locals():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(drain, WAIT)
