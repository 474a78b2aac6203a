"""``sseproxy replay`` on real sockets: timing, matching, turns, misses, the fallback and the CLI."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from helpers import WAIT, Gate, Truncated, raw_request, running_app
from procs import run_cli, sseproxy_process
from upstreams import gated_stream_app

from sseproxy.recording import load_dir
from sseproxy.replay import ReplayOptions, ReplayServer
from sseproxy.tap import Tap

CHAT = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "Hello", "id": "m1"}],
        "metadata": {"request_id": "req-1"}}


def write_rec(directory: Path, name: str, *, method: str = "POST", path: str = "/v1/chat/completions",
              query: str = "", body: Any = CHAT, status: int = 200, headers: list[list[str]] | None = None,
              ttfb_ms: float = 0, frames: list[tuple[float, str]] | None = None, response_body: Any = None,
              end: str = "ok") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    response: dict[str, Any] = {"status": status, "headers": headers or [["Content-Type", "text/event-stream"]],
                                "ttfb_ms": ttfb_ms}
    if response_body is not None:
        response["body"] = response_body
    else:
        response["frames"] = [{"t": t, "data": data} for t, data in (frames or [])]
    response["end"] = end
    request = {"method": method, "path": path, "query": query, "headers": [],
               "body": body if isinstance(body, str | dict) and "base64" in body else
               (body if isinstance(body, str) else json.dumps(body))}
    target = directory / name
    target.write_text(json.dumps({"request": request, "response": response}, indent=2))
    return target


@contextlib.asynccontextmanager
async def running_replay(directory: Path, **options: Any) -> AsyncIterator[str]:
    server = ReplayServer(ReplayOptions(directory, **options))
    host, port = await server.start("127.0.0.1", 0)
    try:
        yield f"http://{host}:{port}"
    finally:
        await server.stop()


def post(body: Any = CHAT) -> tuple[dict[str, str], bytes]:
    return {"Content-Type": "application/json"}, json.dumps(body).encode()


FRAMES = [(50.0, "data: one\n\n"), (350.0, "data: two\n\n"), (650.0, "data: three\n\n")]


@pytest.mark.parametrize("speed", [1.0, 2.0])
async def test_frames_keep_their_timing_scaled_by_speed(tmp_path: Path, speed: float) -> None:
    write_rec(tmp_path, "a.json", frames=FRAMES, ttfb_ms=20,
              headers=[["Content-Type", "text/event-stream"], ["X-Request-Id", "abc"], ["Content-Length", "99"],
                       ["Connection", "close"], ["Transfer-Encoding", "chunked"],
                       ["Date", "Sun, 01 Jan 2023 00:00:00 GMT"]])
    async with running_replay(tmp_path, speed=speed) as url:
        loop = asyncio.get_running_loop()
        sent = loop.time()
        response = await raw_request(url, "POST", "/v1/chat/completions", *post())
        assert response.status == 200 and response.chunked
        assert response.headers["content-type"] == "text/event-stream" and response.headers["x-request-id"] == "abc"
        assert "content-length" not in response.headers and response.headers.get("connection") != "close"
        assert "2023" not in response.headers["date"]
        arrivals = []
        for _t, data in FRAMES:
            assert await response.next_chunk() == data.encode()  # each frame its own write, in order
            arrivals.append(loop.time() - sent)
        assert await response.next_chunk() is None
    for (t, _), at in zip(FRAMES, arrivals, strict=True):
        assert at >= t / speed / 1000 - 0.002, (t, at)  # never before its time
        assert at <= t / speed / 1000 + 1.0, (t, at)    # kept, within a generous bound
    for (t1, _), (t2, _), a1, a2 in zip(FRAMES, FRAMES[1:], arrivals, arrivals[1:], strict=False):
        assert a2 - a1 >= (t2 - t1) / speed / 1000 * 0.8


async def test_speed_0_sends_everything_at_once(tmp_path: Path) -> None:
    write_rec(tmp_path, "a.json", ttfb_ms=20_000, frames=[(10_000, "data: 1\n\n"), (60_000, "data: 2\n\n")])
    async with running_replay(tmp_path, speed=0) as url:
        response = await raw_request(url, "POST", "/v1/chat/completions", *post())
        assert await response.body(timeout=2) == b"data: 1\n\ndata: 2\n\n"
        assert response.chunks == [b"data: 1\n\n", b"data: 2\n\n"]


async def test_a_recording_that_ended_in_an_error_is_a_truncated_close(tmp_path: Path) -> None:
    write_rec(tmp_path, "a.json", frames=[(0, "data: 1\n\n"), (1, "data: par")], end="error")
    async with running_replay(tmp_path, speed=0) as url:
        response = await raw_request(url, "POST", "/v1/chat/completions", *post())
        assert await response.next_chunk() == b"data: 1\n\n"
        assert await response.next_chunk() == b"data: par"
        with pytest.raises(Truncated):
            await response.next_chunk()


async def test_a_body_that_is_not_a_stream_and_not_utf8_is_served_byte_for_byte(tmp_path: Path) -> None:
    payload = b"\x89PNG\r\n\x1a\n\x00\xff"
    write_rec(tmp_path, "a.json", method="PUT", path="/blob", body={"base64": base64.b64encode(b"\xff\xfe").decode()},
              status=201, headers=[["Content-Type", "image/png"], ["Content-Length", "3"]],
              response_body={"base64": base64.b64encode(payload).decode()})
    async with running_replay(tmp_path, speed=0) as url:
        response = await raw_request(url, "PUT", "/blob", {}, b"\xff\xfe")
        assert response.status == 201 and response.headers["content-type"] == "image/png"
        assert response.headers["content-length"] == str(len(payload))
        assert await response.body() == payload
        assert (await raw_request(url, "PUT", "/blob", {}, b"\xff\xfd")).status == 404


async def test_a_client_hang_up_stops_that_replay_and_tap_prints_each_event(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_rec(tmp_path, "a.json", frames=[(0, "event: delta\ndata: hello\n\n"), (30_000, "data: never\n\n")])
    out = io.StringIO()
    server = ReplayServer(ReplayOptions(tmp_path), tap=Tap(out, color=False))
    host, port = await server.start("127.0.0.1", 0)
    try:
        with caplog.at_level(logging.INFO, "sseproxy.access"):
            response = await raw_request(f"http://{host}:{port}", "POST", "/v1/chat/completions", *post())
            assert await response.next_chunk() == b"event: delta\ndata: hello\n\n"
            response.close()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + WAIT
            while not caplog.records and loop.time() < deadline:
                await asyncio.sleep(0.01)
        (line,) = caplog.records
        assert "outcome=client_closed" in line.getMessage() and "events=1" in line.getMessage()
        assert " a.json #1 delta 24B hello" in out.getvalue()
    finally:
        await server.stop()


async def test_ignore_field_at_any_depth(tmp_path: Path) -> None:
    write_rec(tmp_path, "a.json", frames=[(0, "data: hit\n\n")])
    other = {**CHAT, "messages": [{**CHAT["messages"][0], "id": "m2"}],  # type: ignore[dict-item]
             "metadata": {"request_id": "req-2"}}
    async with running_replay(tmp_path, speed=0) as url:
        miss = await raw_request(url, "POST", "/v1/chat/completions", *post(other))
        assert miss.status == 404
        assert "differs in body.messages[0].id, body.metadata.request_id" in json.loads(await miss.body())["error"][
            "message"]
    async with running_replay(tmp_path, speed=0, ignore_fields=("id", "request_id")) as url:
        hit = await raw_request(url, "POST", "/v1/chat/completions", *post(other))
        assert hit.status == 200 and await hit.body() == b"data: hit\n\n"


async def test_recordings_of_one_request_are_served_in_turn(tmp_path: Path) -> None:
    write_rec(tmp_path, "20250101T000000.000Z-0001-POST-x.json", frames=[(0, "data: first\n\n")])
    write_rec(tmp_path, "20250101T000001.000Z-0002-POST-x.json", frames=[(0, "data: second\n\n")])
    async with running_replay(tmp_path, speed=0) as url:
        bodies = [await (await raw_request(url, "POST", "/v1/chat/completions", *post())).body() for _ in range(3)]
    assert bodies == [b"data: first\n\n", b"data: second\n\n", b"data: first\n\n"]


async def test_a_miss_is_404_no_recording_with_the_nearest(tmp_path: Path) -> None:
    write_rec(tmp_path, "chat.json", frames=[])
    write_rec(tmp_path, "models.json", method="GET", path="/v1/models", body="", response_body="{}")
    write_rec(tmp_path, "embed.json", path="/v1/embeddings", frames=[])
    write_rec(tmp_path, "other.json", path="/zzz", frames=[])
    async with running_replay(tmp_path, speed=0) as url:
        response = await raw_request(url, "POST", "/v1/chat/completions", *post({**CHAT, "model": "x"}))
        assert response.status == 404 and response.headers["content-type"].startswith("application/json")
        error = json.loads(await response.body())["error"]
        assert error["type"] == "no_recording"
        assert error["nearest"][0] == "chat.json" and len(error["nearest"]) == 3
        assert error["message"].startswith("no recording matches POST /v1/chat/completions;")
        response = await raw_request(url, "GET", "/v1/embeddings?x=1")
        error = json.loads(await response.body())["error"]
        assert error["nearest"][0] == "embed.json" and "GET /v1/embeddings?x=1" in error["message"]


async def test_fallback_streams_misses_through_and_records_them(tmp_path: Path) -> None:
    replayed, recorded = tmp_path / "replayed", tmp_path / "recorded"
    write_rec(replayed, "a.json", frames=[(0, "data: recorded\n\n")])
    gate = Gate()
    other = {**CHAT, "model": "not-recorded"}
    async with running_app(gated_stream_app(gate, "text/event-stream")) as upstream, \
            running_replay(replayed, speed=0, fallback=upstream, record=recorded) as url:
        hit = await raw_request(url, "POST", "/v1/chat/completions", *post())
        assert await hit.body() == b"data: recorded\n\n"
        miss = await raw_request(url, "POST", "/v1/chat/completions?x=1",
                                 {**post(other)[0], "Authorization": "Bearer tok-1"}, post(other)[1])
        assert miss.status == 200 and miss.headers["content-type"] == "text/event-stream"
        for data in (b"data: a\n\n", b"data: b\n\n"):
            gate.release(data)
            assert await miss.next_chunk() == data  # streamed through, each before the next is sent
        gate.release(None)
        assert await miss.next_chunk() is None
        ((name, recording),) = await wait_for_recordings(recorded)
    assert name.endswith("-POST-v1_chat_completions.json")
    assert recording.request.query == "x=1" and json.loads(recording.request.body) == other
    assert dict(recording.request.headers)["Authorization"] == "<redacted>"
    assert recording.response.end == "ok" and recording.response.frames is not None
    assert [f.data for f in recording.response.frames] == [b"data: a\n\n", b"data: b\n\n"]
    assert recording.response.frames[0].t <= recording.response.frames[1].t
    async with running_replay(recorded, speed=0) as url:
        again = await raw_request(url, "POST", "/v1/chat/completions?x=1", *post(other))
        assert again.chunks == [] and await again.body() == b"data: a\n\ndata: b\n\n"


async def test_fallback_recording_into_the_replayed_directory_answers_the_next_request(tmp_path: Path) -> None:
    gate = Gate()
    directory = tmp_path / "not-yet"  # the first run: --record makes it
    async with running_app(gated_stream_app(gate, "application/x-ndjson")) as upstream, \
            running_replay(directory, speed=0, fallback=upstream, record=directory) as url:
        first = await raw_request(url, "POST", "/v1/chat/completions", *post())
        gate.release(b'{"n": 1}\n')
        gate.release(None)
        assert await first.body() == b'{"n": 1}\n'
        await wait_for_recordings(directory)
        second = await raw_request(url, "POST", "/v1/chat/completions", *post())  # the gate is empty now
        assert await second.body() == b'{"n": 1}\n'


async def test_a_fallback_cut_mid_stream_is_recorded_as_an_error(tmp_path: Path) -> None:
    gate = Gate()
    async with running_app(gated_stream_app(gate, "text/event-stream")) as upstream, \
            running_replay(tmp_path, speed=0, fallback=upstream, record=tmp_path / "rec") as url:
        response = await raw_request(url, "GET", "/events")
        gate.release(b"data: 1\n\n")
        assert await response.next_chunk() == b"data: 1\n\n"
        gate.release(b"ABORT")
        with pytest.raises(Truncated):
            await response.next_chunk()
        ((_, recording),) = await wait_for_recordings(tmp_path / "rec")
    assert recording.response.end == "error"


async def test_an_unreachable_fallback_is_502(tmp_path: Path) -> None:
    async with running_replay(tmp_path, fallback="http://127.0.0.1:1") as url:
        response = await raw_request(url, "GET", "/x")
        assert response.status == 502
        assert json.loads(await response.body())["error"]["type"] == "upstream_unavailable"


async def wait_for_recordings(directory: Path) -> list[Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while loop.time() < deadline:
        if directory.is_dir() and (found := load_dir(directory)):
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"no recording appeared in {directory}")


async def test_the_cli_prints_the_ready_line_serves_health_and_stops_on_sigterm(tmp_path: Path) -> None:
    write_rec(tmp_path, "a.json", frames=[(0, "data: 1\n\n"), (5, "data: 2\n\n")])
    async with sseproxy_process("replay", str(tmp_path), "--listen", "127.0.0.1:0", "--speed", "0") as (proc, url):
        response = await raw_request(url, "POST", "/v1/chat/completions", *post())
        assert await response.body() == b"data: 1\n\ndata: 2\n\n"
        health = await raw_request(url, "GET", "/_sseproxy/health")
        assert health.status == 200
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), WAIT) == 0
        assert proc.stderr is not None
        log = (await proc.stderr.read()).decode()
    assert '"POST /v1/chat/completions" route=a.json status=200' in log


async def test_the_cli_refuses_bad_arguments_and_bad_recordings_with_status_2(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('{"request": {"path": "x"}, "response": {}}')
    code, _, err = await run_cli("replay", str(tmp_path), "--listen", "127.0.0.1:0")
    assert code == 2 and f"{tmp_path / 'bad.json'}: request.path: 'x' must start with /" in err
    code, _, err = await run_cli("replay", str(tmp_path / "nope"))
    assert code == 2 and "not a directory" in err
    code, _, err = await run_cli("replay", str(tmp_path), "--record", str(tmp_path))
    assert code == 2 and "--fallback" in err
    code, _, err = await run_cli("replay", str(tmp_path), "--fallback", "ftp://x", "--listen", "nowhere")
    assert code == 2 and "--fallback" in err and "--listen" in err
    assert (await run_cli("replay", str(tmp_path), "--speed", "-1"))[0] == 2
