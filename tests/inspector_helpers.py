"""Helpers for the inspector tests: an upstream with one gate per path, and a reader of the
inspector's feed over a raw connection."""

from __future__ import annotations

import json
from collections import deque
from typing import Any

from aiohttp import web
from helpers import WAIT, Gate, RawResponse, raw_request, released_stream


def gated_paths_app(gates: dict[str, Gate]) -> web.Application:
    """An event stream per path: each writes what the test releases through that path's gate."""

    async def stream(request: web.Request) -> web.StreamResponse:
        return await released_stream(request, gates[request.path])

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", stream)
    return app


class Feed:
    """The inspector's feed as (type, data) pairs, read from the chunks the proxy writes."""

    def __init__(self, response: RawResponse):
        self.response = response
        self.raw = b""               # everything received, to check no secret ever appeared
        self._buf = b""
        self._events: deque[tuple[str, dict[str, Any]]] = deque()
        self.ended = False

    @classmethod
    async def open(cls, proxy: str, query: str = "", headers: dict[str, str] | None = None) -> Feed:
        response = await raw_request(proxy, "GET", "/_sseproxy/streams/events" + query, headers)
        assert response.status == 200, response.status
        assert response.headers["content-type"].startswith("text/event-stream")
        return cls(response)

    async def next(self, timeout: float = WAIT) -> tuple[str, dict[str, Any]]:
        while not self._events:
            chunk = await self.response.next_chunk(timeout)
            if chunk is None:
                self.ended = True
                raise EOFError("the feed ended")
            self.raw += chunk
            self._buf += chunk
            *blocks, self._buf = self._buf.split(b"\n\n")
            for block in blocks:
                fields = dict(line.split(": ", 1) for line in block.decode().split("\n") if ": " in line
                              and not line.startswith(":"))
                if "event" in fields:
                    self._events.append((fields["event"], json.loads(fields["data"])))
        return self._events.popleft()

    async def until(self, kind: str, timeout: float = WAIT) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, Any]]:
        """Events up to the first of ``kind`` (bounded), and that one's data."""
        seen: list[tuple[str, dict[str, Any]]] = []
        for _ in range(10_000):
            event, data = await self.next(timeout)
            seen.append((event, data))
            if event == kind:
                return seen, data
        raise AssertionError(f"no {kind} in {seen[-20:]}")


async def stream_client(proxy: str, path: str) -> RawResponse:
    response = await raw_request(proxy, "GET", path, {"Accept": "text/event-stream"})
    assert response.status == 200
    return response

