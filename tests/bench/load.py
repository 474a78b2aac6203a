"""The benchmark's load client: C concurrent streams, per-event added latency (receive time minus the
origin's send stamp), events/s, MB/s, time to first event, errors."""

from __future__ import annotations

import asyncio
import time
from array import array
from dataclasses import dataclass, field

import aiohttp

PREFIX = b'data: {"t": '


def failed(result: Result, exc: BaseException | str) -> None:
    kind = exc if isinstance(exc, str) else type(exc).__name__
    result.errors += 1
    result.error_kinds[kind] = result.error_kinds.get(kind, 0) + 1


@dataclass
class Result:
    latencies_ns: array = field(default_factory=lambda: array("q"))  # type: ignore[type-arg]
    ttfe_ns: array = field(default_factory=lambda: array("q"))  # type: ignore[type-arg]
    events: int = 0
    bytes: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


def session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True),
                                 timeout=aiohttp.ClientTimeout(total=None, sock_read=60), auto_decompress=False)


async def read_stream(http: aiohttp.ClientSession, url: str, result: Result, until: float | None = None) -> None:
    started = time.time_ns()
    try:
        async with http.get(url) as resp:
            if resp.status != 200:
                failed(result, f"HTTP {resp.status}")
                return
            buf = bytearray()
            first = True
            async for chunk in resp.content.iter_any():
                now = time.time_ns()
                result.bytes += len(chunk)
                buf += chunk
                start = 0
                while (end := buf.find(b"\n\n", start)) >= 0:
                    if buf.startswith(PREFIX, start):
                        stamp = int(buf[start + len(PREFIX): buf.index(b",", start)])
                        result.latencies_ns.append(now - stamp)
                        result.events += 1
                        if first:
                            result.ttfe_ns.append(now - started)
                            first = False
                    start = end + 2
                del buf[:start]
                if until is not None and time.monotonic() >= until:
                    return
    except (aiohttp.ClientError, TimeoutError) as exc:
        failed(result, exc)


async def streams(base: str, count: int, events: int, interval: float, size: int) -> Result:
    """``count`` concurrent streams of ``events`` events every ``interval`` seconds."""
    result = Result()
    url = f"{base}/sse?n={events}&interval={interval}&size={size}"
    async with session() as http:
        started = time.monotonic()
        await asyncio.gather(*(read_stream(http, url, result) for _ in range(count)))
        result.seconds = time.monotonic() - started
    return result


async def flood(base: str, count: int, seconds: float, size: int) -> Result:
    """``count`` streams of events sent as fast as possible, read for ``seconds``."""
    result = Result()
    url = f"{base}/sse?n=0&interval=0&size={size}"
    async with session() as http:
        started = time.monotonic()
        await asyncio.gather(*(read_stream(http, url, result, until=started + seconds) for _ in range(count)))
        result.seconds = time.monotonic() - started
    return result


async def idle(base: str, count: int, on_open: object) -> Result:
    """Open ``count`` streams that stay silent after one event; call ``on_open()`` with all open."""
    result = Result()
    opened = 0
    all_open = asyncio.Event()
    release = asyncio.Event()
    gate = asyncio.Semaphore(256)  # bounds connection attempts in flight, not open streams

    async def hold(http: aiohttp.ClientSession) -> None:
        nonlocal opened
        try:
            async with gate:
                resp = await http.get(f"{base}/idle")
                await resp.content.readuntil(b"\n\n")
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            failed(result, exc)
            resp = None
        opened += 1
        if opened == count:
            all_open.set()
        await release.wait()
        if resp is not None:
            resp.close()

    async with session() as http:
        started = time.monotonic()
        tasks = [asyncio.create_task(hold(http)) for _ in range(count)]
        await asyncio.wait_for(all_open.wait(), 300)
        result.seconds = time.monotonic() - started
        result.extra.update(on_open())  # type: ignore[operator]
        release.set()
        await asyncio.gather(*tasks)
    return result


async def download(base: str, size: int) -> Result:
    result = Result()
    async with session() as http:
        started = time.monotonic()
        try:
            async with http.get(f"{base}/download?size={size}") as resp:
                async for chunk in resp.content.iter_any():
                    result.bytes += len(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            failed(result, exc)
        result.seconds = time.monotonic() - started
    if result.bytes != size:
        failed(result, "short body")
    return result
