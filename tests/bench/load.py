"""The benchmark's load client: C concurrent streams, per-event added latency (the kernel's receive
time of the read that carried the event, minus the origin's send stamp: ``stamped``), events/s,
MB/s, time to first event, the peak number of streams open at once, errors; and hang-ups, timed
from the client's close to the moment the origin saw it."""

from __future__ import annotations

import asyncio
import time
from array import array
from dataclasses import dataclass, field

import aiohttp
import stamped
from stamped import PREFIX


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
    open_now: int = 0  # streams between their response head and their end, as this client sees them
    open_peak: int = 0


def session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True),
                                 timeout=aiohttp.ClientTimeout(total=None, sock_read=60), auto_decompress=False)


async def read_stream(url: str, result: Result, until: float | None = None, delay: float = 0.0) -> None:
    """One stream, from its request to its end, timed by the kernel's receive stamps (``stamped``).
    ``delay`` staggers the start; time to first event counts from the moment the request is made,
    not from the run's start."""
    if delay:
        await asyncio.sleep(delay)

    def opened() -> None:
        result.open_now += 1
        result.open_peak = max(result.open_peak, result.open_now)

    def closed() -> None:
        result.open_now -= 1

    error = await stamped.read(url, result, until, opened, closed)
    if error is not None:
        failed(result, error)


async def streams(base: str, count: int, events: int, interval: float, size: int, spread: float = 0.0) -> Result:
    """``count`` concurrent streams of ``events`` events every ``interval`` seconds, their requests
    started evenly over ``spread`` seconds (0: all at once)."""
    result = Result()
    url = f"{base}/sse?n={events}&interval={interval}&size={size}"
    step = spread / count if count else 0.0
    started = time.monotonic()
    await asyncio.gather(*(read_stream(url, result, delay=i * step) for i in range(count)))
    result.seconds = time.monotonic() - started
    return result


async def flood(base: str, count: int, seconds: float, size: int) -> Result:
    """``count`` streams of events sent as fast as possible, read for ``seconds``."""
    result = Result()
    url = f"{base}/sse?n=0&interval=0&size={size}"
    started = time.monotonic()
    await asyncio.gather(*(read_stream(url, result, until=started + seconds) for _ in range(count)))
    result.seconds = time.monotonic() - started
    return result


async def idle(base: str, count: int, on_open: object) -> Result:
    """Open ``count`` streams that stay silent after one event; call ``on_open()`` with all open."""
    result = Result()
    opened = 0
    all_open = asyncio.Event()
    release = asyncio.Event()
    gate = asyncio.Semaphore(256)  # bounds connection attempts in flight, not open streams

    held: list[aiohttp.ClientResponse] = []

    async def hold(http: aiohttp.ClientSession) -> None:
        nonlocal opened
        resp = None
        try:
            async with gate:
                resp = await http.get(f"{base}/idle")
                first = await resp.content.readuntil(b"\n\n")  # at EOF it returns what came, not an error
            if resp.status != 200:
                failed(result, f"HTTP {resp.status}")
            elif not first.startswith(PREFIX) or not first.endswith(b"\n\n"):
                failed(result, "no first event")
            else:
                held.append(resp)
        except (aiohttp.ClientError, TimeoutError, ValueError, EOFError) as exc:
            failed(result, exc)
        opened += 1
        if opened == count:
            all_open.set()
        await release.wait()
        if resp is not None:
            resp.close()

    async with session() as http:
        started = time.monotonic()
        tasks = [asyncio.create_task(hold(http)) for _ in range(count)]
        try:
            await asyncio.wait_for(all_open.wait(), 300)
            result.seconds = time.monotonic() - started
            result.events = len(held)  # one event on each stream that opened
            result.extra.update(on_open())  # type: ignore[operator]
            # Still open as the figures are taken: a stream the proxy has since closed is not held.
            result.open_peak = sum(1 for r in held if not r.content.is_eof() and r.connection is not None)
        finally:
            if not all_open.is_set():
                for task in tasks:
                    task.cancel()
            release.set()
            await asyncio.gather(*tasks, return_exceptions=True)
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


async def hangups(base: str, origin: str, count: int, interval: float, wait: float = 2.0) -> Result:
    """``count`` hang-ups, one after another: open a stream (silent after its first event when
    ``interval`` is 0, else an event per interval), read the first event, hold it 50 ms, close the
    connection, then ask the origin when it saw the disconnect. ``latencies_ns`` holds those delays;
    a hang-up the origin has not seen after ``wait`` seconds counts as a "not seen" error."""
    result = Result()
    run = f"{time.time_ns():x}"
    async with session() as http, session() as ask:
        started = time.monotonic()
        for i in range(count):
            key = f"{run}-{i}"
            try:
                resp = await http.get(f"{base}/hang?id={key}&interval={interval}")
                await resp.content.readuntil(b"\n\n")
                await asyncio.sleep(0.05)
                hung = time.time_ns()
                resp.close()  # force_close connector: this closes the socket
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                failed(result, exc)
                continue
            deadline = time.monotonic() + wait
            while True:
                async with ask.get(f"{origin}/hangups?id={key}") as seen:
                    if seen.status == 200:
                        result.latencies_ns.append(int(await seen.text()) - hung)
                        result.events += 1
                        break
                if time.monotonic() >= deadline:
                    failed(result, "not seen")
                    break
                await asyncio.sleep(0.01)
        result.seconds = time.monotonic() - started
    return result
