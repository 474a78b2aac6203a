"""Record through a running proxy against a gated upstream, then replay the recording with
``sseproxy replay``: the same status, headers and frames come back, and no secret is in the files.
A route's ``record`` directory, else the top-level one, opens a ``Recorder`` hook per exchange."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from helpers import WAIT, Gate, RawResponse, Truncated, raw_request, released_stream, running_app, running_proxy
from procs import sseproxy_process

from sseproxy.recording import Recording, load_dir

KEY = "sk-injected-0123456789abcdef"
TOKEN = "inbound-token-fedcba9876543210"
COOKIE = "session=cookie-value-42"
SET_COOKIE = "sid=set-cookie-value-43"
BODY = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "Hello"}]}


def sse_app(gate: Gate) -> web.Application:
    """An LLM-like upstream: echoes the injected key into a header and sets a cookie (both must be
    redacted), then writes whatever the test releases, one write each; b"ABORT" resets."""

    async def stream(request: web.Request) -> web.StreamResponse:
        await request.read()
        return await released_stream(request, gate, {"X-Upstream": "gated",
                                                     "X-Seen-Key": request.headers.get("Authorization", ""),
                                                     "Set-Cookie": SET_COOKIE})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", stream)
    return app


def proxy_config(upstream: str, directory: Path) -> dict[str, Any]:
    return {"record": str(directory), "inbound_auth": {"tokens": [TOKEN]},
            "routes": [{"upstream": upstream, "request_headers": {"set": {"Authorization": f"Bearer {KEY}"}}}]}


def client_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}", "Cookie": COOKIE, "X-Api-Key": KEY, "Content-Type": "application/json"}


async def recordings(directory: Path, count: int = 1) -> list[tuple[str, Recording]]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while loop.time() < deadline:
        found = load_dir(directory) if directory.is_dir() else []
        if len(found) >= count:
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"expected {count} recording(s) in {directory}")


FRAMES = [b'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n',
          b'data: {"choices":[{"delta":{"content":"lo, the key is ' + KEY.encode() + b'"}}]}\n\n',
          b"data: [DONE]\n\n"]
CHAT = "/v1/chat/completions"


async def post_chat(base: str, target: str = CHAT, headers: dict[str, str] | None = None) -> RawResponse:
    """The chat request (BODY) as a POST to ``target``; the response head is read."""
    return await raw_request(base, "POST", target, headers or {}, json.dumps(BODY).encode())


@contextlib.asynccontextmanager
async def recorded_chat(directory: Path, target: str = CHAT) -> AsyncIterator[tuple[Gate, RawResponse]]:
    """The gated upstream behind a proxy that records into ``directory``, and the client's chat
    request (with its credentials) sent through it; yields the upstream's gate and the response."""
    gate = Gate()
    async with running_app(sse_app(gate)) as upstream, \
            running_proxy(proxy_config(upstream, directory)) as (proxy, _):
        yield gate, await post_chat(proxy, target, client_headers())


async def relay_frames(gate: Gate, response: RawResponse, gap: float = 0) -> None:
    """Release each of FRAMES and see it come through as the upstream wrote it (``gap`` seconds
    between them, the gap being recorded, not a synchronisation), then the normal end."""
    for frame in FRAMES:
        gate.release(frame)
        assert await response.next_chunk() == frame
        await asyncio.sleep(gap)
    gate.release(None)
    assert await response.next_chunk() is None


@contextlib.asynccontextmanager
async def replaying(directory: Path, *options: str) -> AsyncIterator[str]:
    """``sseproxy replay`` of ``directory`` on a free port; yields its base URL."""
    async with sseproxy_process("replay", str(directory), "--listen", "127.0.0.1:0", *options) as (_, url):
        yield url


async def test_a_proxied_stream_is_recorded_in_order_without_secrets_and_replays_the_same(tmp_path: Path) -> None:
    directory = tmp_path / "rec"
    async with recorded_chat(directory, f"{CHAT}?api-version=1") as (gate, response):
        assert response.status == 200
        await relay_frames(gate, response)
        ((name, recording),) = await recordings(directory)

    assert name.endswith("-POST-v1_chat_completions.json")
    assert recording.request.path == "/v1/chat/completions" and recording.request.query == "api-version=1"
    assert json.loads(recording.request.body) == BODY
    assert recording.response.status == 200 and recording.response.end == "ok"
    assert recording.response.frames is not None
    assert [f.data for f in recording.response.frames] == [FRAMES[0], FRAMES[1].replace(KEY.encode(), b"<redacted>"),
                                                           FRAMES[2]]
    times = [f.t for f in recording.response.frames]
    assert times == sorted(times) and times[0] >= recording.response.ttfb_ms >= 0
    everything = b"".join(p.read_bytes() for p in directory.iterdir())
    for secret in (KEY, TOKEN, COOKIE, SET_COOKIE, "cookie-value-42", "set-cookie-value-43"):
        assert secret.encode() not in everything, secret
    headers = dict(recording.request.headers)
    assert headers["Authorization"] == headers["Cookie"] == headers["X-Api-Key"] == "<redacted>"
    assert dict(recording.response.headers)["Set-Cookie"] == "<redacted>"

    async with replaying(directory, "--speed", "0") as url:
        again = await post_chat(url, f"{CHAT}?api-version=1", {"Content-Type": "application/json"})
        assert again.status == 200
        assert again.headers["content-type"] == "text/event-stream" and again.headers["x-upstream"] == "gated"
        assert await again.body() == b"".join(f.data for f in recording.response.frames)
        assert again.chunks == [f.data for f in recording.response.frames]


async def test_a_cut_stream_is_recorded_as_an_error_and_replayed_as_a_truncated_close(tmp_path: Path) -> None:
    directory = tmp_path / "rec"
    async with recorded_chat(directory) as (gate, response):
        gate.release(FRAMES[0])
        assert await response.next_chunk() == FRAMES[0]
        gate.release(b"ABORT")
        with pytest.raises(Truncated):
            while await response.next_chunk() is not None:  # the proxy's error event, then the cut
                pass
        ((_, recording),) = await recordings(directory)
    assert recording.response.end == "error"
    assert recording.response.frames is not None and recording.response.frames[0].data == FRAMES[0]

    async with replaying(directory, "--speed", "0") as url:
        again = await post_chat(url)
        assert await again.next_chunk() == FRAMES[0]
        with pytest.raises(Truncated):
            await again.next_chunk()


async def test_replay_at_speed_1_keeps_the_recorded_gaps(tmp_path: Path) -> None:
    directory = tmp_path / "rec"
    async with recorded_chat(directory) as (gate, response):
        await relay_frames(gate, response, gap=0.15)
        ((_, recording),) = await recordings(directory)
    assert recording.response.frames is not None
    recorded = [f.t / 1000 for f in recording.response.frames]
    assert all(b - a >= 0.14 for a, b in itertools.pairwise(recorded))

    async with replaying(directory) as url:
        loop = asyncio.get_running_loop()
        sent = loop.time()
        again = await post_chat(url)
        arrivals = []
        for frame in recording.response.frames:
            assert await again.next_chunk() == frame.data
            arrivals.append(loop.time() - sent)
    for t, at in zip(recorded, arrivals, strict=True):
        assert t - 0.005 <= at <= t + 1.0, (t, at)
    for (r1, r2), (a1, a2) in zip(itertools.pairwise(recorded), itertools.pairwise(arrivals), strict=True):
        assert a2 - a1 >= (r2 - r1) * 0.8
