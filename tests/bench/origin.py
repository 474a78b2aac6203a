"""The benchmark's SSE origin: stamps each event with its send time (CLOCK_REALTIME in ns, shared by
every process on the machine), at an interval or as fast as the socket takes them.

    python tests/bench/origin.py PORT

GET /sse?n=N&interval=SECONDS&size=BYTES   N events of about BYTES each (interval 0: as fast as possible,
                                           n 0: until the client leaves)
GET /idle                                  one event, then silence until the client leaves
GET /download?size=BYTES                   a non-streamed body with Content-Length
GET /hang?id=ID&interval=SECONDS           an event now, then one per interval (0: silence) until the
                                           client leaves; notes the time it saw the disconnect
GET /hangups?id=ID                         that time in ns (200), or 404 while not seen yet
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import OrderedDict

import uvloop
from aiohttp import web

SSE = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
BLOCK = b"x" * (1024 * 1024)
HANGUPS = web.AppKey("hangups", OrderedDict[str, int])
KEPT_HANGUPS = 10_000  # bounds the disconnect times kept for the bench to read back (a few hundred KiB)


def event(size: int) -> bytes:
    head = b'data: {"t": %d, "p": "' % time.time_ns()
    pad = max(0, size - len(head) - 5)
    return head + BLOCK[:pad] + b'"}\n\n'


async def sse(request: web.Request) -> web.StreamResponse:
    n = int(request.query.get("n", "10"))
    interval = float(request.query.get("interval", "0"))
    size = int(request.query.get("size", "100"))
    response = web.StreamResponse(headers=SSE)
    await response.prepare(request)
    sent = 0
    while n == 0 or sent < n:
        await response.write(event(size))
        sent += 1
        if interval:
            await asyncio.sleep(interval)
    await response.write_eof()
    return response


async def idle(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers=SSE)
    await response.prepare(request)
    await response.write(event(100))
    await asyncio.sleep(3600)
    return response


async def hang(request: web.Request) -> web.StreamResponse:
    """The upstream end of a hang-up: the time it learns the client left (the proxy closed its
    connection, which cancels this handler, or a write fails) is what the bench reads back."""
    seen = request.app[HANGUPS]
    key = request.query["id"]
    interval = float(request.query.get("interval", "0"))
    response = web.StreamResponse(headers=SSE)
    try:
        await response.prepare(request)
        await response.write(event(100))
        while True:
            await asyncio.sleep(interval or 3600)
            await response.write(event(100))
    except (asyncio.CancelledError, ConnectionError):
        seen[key] = time.time_ns()
        while len(seen) > KEPT_HANGUPS:
            seen.popitem(last=False)
        raise
    return response


async def hangups(request: web.Request) -> web.Response:
    stamp = request.app[HANGUPS].pop(request.query["id"], None)
    if stamp is None:
        raise web.HTTPNotFound()
    return web.Response(text=str(stamp))


async def download(request: web.Request) -> web.StreamResponse:
    size = int(request.query["size"])
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = size
    await response.prepare(request)
    left = size
    while left > 0:
        piece = BLOCK[: min(left, len(BLOCK))]
        await response.write(piece)
        left -= len(piece)
    await response.write_eof()
    return response


def main() -> None:
    app = web.Application()
    app.router.add_get("/sse", sse)
    app.router.add_get("/idle", idle)
    app.router.add_get("/download", download)
    app.router.add_get("/hang", hang)
    app.router.add_get("/hangups", hangups)
    app[HANGUPS] = OrderedDict()
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, backlog=4096,
                handler_cancellation=True)


if __name__ == "__main__":
    main()
