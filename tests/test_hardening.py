"""The hardening round (issue 10), each through a running proxy with a raw-socket upstream or
client: responses never cross between clients, one stream never stalls the rest, a reset is never
a clean end, bounded request heads, bad upstream answers are 502s, and the smaller items."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import signal
import socket
import tempfile
import threading
from pathlib import Path

import pytest
from aiohttp import web
from backports import zstd
from helpers import WAIT, Gate, Truncated, raw_request, raw_server, read_head, reset, running_app, running_proxy
from procs import sseproxy_process
from upstreams import SSE_HEAD, answers, chunk, echo_app, gated_stream_app, raw_proxy

from sseproxy.hooks import ExchangeInfo
from sseproxy.logs import Redactor
from sseproxy.tap import Tap


async def test_an_unsolicited_response_on_an_idle_pooled_connection_never_reaches_the_next_client() -> None:
    """The upstream answers, then writes a second response nobody asked for while the connection
    sits in the pool. The proxy must close that connection (the upstream sees it closed), and every
    later client gets its own answer, never the smuggled one with its cookie."""
    smuggled_sent, first_closed = asyncio.Event(), asyncio.Event()
    connections = 0

    async def rogue(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        mine_is_rogue = connections == 1
        try:
            while True:
                head = await read_head(reader)
                path = head.split(b" ")[1]
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(path), path))
                await writer.drain()
                if mine_is_rogue and not smuggled_sent.is_set():
                    await asyncio.sleep(0.05)  # the proxy has pooled the connection by now
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nSet-Cookie: victim=1\r\n\r\nsmuggled")
                    await writer.drain()
                    smuggled_sent.set()
        except asyncio.IncompleteReadError:
            if mine_is_rogue:
                first_closed.set()
            raise

    async with raw_proxy(rogue) as proxy:
        first = await raw_request(proxy, "GET", "/first", {})
        assert await first.body() == b"/first"
        await asyncio.wait_for(smuggled_sent.wait(), WAIT)
        await asyncio.wait_for(first_closed.wait(), WAIT)  # the proxy closed the connection that turned readable
        for i in range(5):  # every later client gets its own response, never the smuggled one
            resp = await raw_request(proxy, "GET", f"/next{i}", {})
            assert await resp.body() == f"/next{i}".encode()
            assert "set-cookie" not in resp.headers


async def test_bytes_left_after_a_response_close_that_upstream_connection() -> None:
    """A response followed, in the same write, by a whole second response: the first is relayed,
    the connection is closed, and the next client gets a fresh connection's answer."""
    connections = 0

    async def extra(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            head = await read_head(reader)
            mine = head.split(b" ")[1]
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(mine), mine)
                         + b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled")
            await writer.drain()

    async with raw_proxy(extra) as proxy:
        for i in range(3):
            resp = await raw_request(proxy, "GET", f"/r{i}", {})
            assert resp.status == 200 and await resp.body() == f"/r{i}".encode()
    assert connections == 3


async def test_a_response_that_ends_before_the_request_body_was_sent_closes_the_connection() -> None:
    """The upstream answers before reading the body, then reads on. The proxy must close that
    connection rather than finish sending the body and pool it: what a connection carries after a
    response the upstream did not wait for is not to be trusted (Go does the same)."""
    connections = 0
    later_requests_on_first: list[bytes] = []
    first_done = asyncio.Event()

    async def answers_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        mine = connections
        head = await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        if mine != 1:
            return
        try:
            while data := await reader.read(1 << 16):  # the body, and whatever comes after it
                if b"GET /next" in data:
                    later_requests_on_first.append(data)
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        finally:
            first_done.set()
        del head

    body = b"x" * (8 * 1024 * 1024)
    async with raw_proxy(answers_first) as proxy:
        host, port = proxy.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"POST /ignore HTTP/1.1\r\nHost: %s:%s\r\nContent-Length: %d\r\n\r\n"
                     % (host.encode(), port.encode(), len(body)))
        sending = asyncio.create_task(_send_all(writer, body))
        head = await read_head(reader)
        assert head.startswith(b"HTTP/1.1 200")
        await asyncio.wait_for(first_done.wait(), WAIT)  # the proxy closed the first connection
        nxt = await raw_request(proxy, "GET", "/next", {})
        assert nxt.status == 200 and await nxt.body() == b"ok"
        sending.cancel()
        writer.close()
    assert later_requests_on_first == []
    assert connections == 2


async def _send_all(writer: asyncio.StreamWriter, body: bytes) -> None:
    with contextlib.suppress(ConnectionError):
        for i in range(0, len(body), 1 << 20):  # bounded: 8 writes
            writer.write(body[i:i + (1 << 20)])
            await writer.drain()


def zstd_bomb_app(frames: int) -> web.Application:
    """An event stream, zstd-encoded, that expands hugely: one 16 MiB frame of tiny events,
    compressed once (1.5 KB) and sent ``frames`` times (concatenated frames are one valid stream),
    so the whole of it arrives in one read and only decoding takes time."""
    frame = zstd.compress(b"data: x\n\n" * (16 * 1024 * 1024 // 9))

    async def bomb(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Content-Encoding": "zstd"})
        await response.prepare(request)
        await response.write(frame * frames)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/bomb", bomb)
    return app


class FastReader:
    """A client that reads as fast as the kernel delivers: blocking ``recv_into`` on its own thread,
    so the proxy's writes never wait for it (the case where nothing else makes a stream yield)."""

    def __init__(self, base: str, target: str):
        host, port = base.removeprefix("http://").rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=WAIT * 6)
        self.sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        self.received = 0
        self.ended = threading.Event()

    def run(self) -> None:
        buffer = bytearray(4 << 20)
        with contextlib.suppress(OSError):
            while (n := self.sock.recv_into(buffer)) and self.received < 2 << 30:  # bounded: 2 GiB
                self.received += n
                if buffer[:n].endswith(b"\r\n0\r\n\r\n"):  # the final chunk: the whole bomb was relayed
                    break
        self.ended.set()


async def test_a_stream_that_expands_hugely_never_stalls_the_other_streams_or_health() -> None:
    """A fast client reading a 1 GiB decoded stream (100 KB on the wire): while it runs, another
    stream's next event and a health check are both answered; before, the loop was held until the
    whole bomb had been relayed."""
    gate = Gate()
    async with running_app(zstd_bomb_app(64)) as bomb_up, running_app(gated_stream_app(gate, "text/event-stream")
                                                                    ) as calm_up, sseproxy_process(
            "serve", "--listen", "127.0.0.1:0", "--route", f"/bomb={bomb_up}/bomb", "--route", f"/={calm_up}"
    ) as (_proc, url):
        calm = await raw_request(url, "GET", "/calm", {})
        bomb = FastReader(url, "/bomb")
        reading = asyncio.get_running_loop().run_in_executor(None, bomb.run)
        try:
            for _ in range(500):  # bounded: until the bomb is well under way
                if bomb.received > 8 << 20:
                    break
                await asyncio.sleep(0.01)
            gate.release(b"data: still here\n\n")
            assert await calm.next_chunk(WAIT * 4) == b"data: still here\n\n"
            health = await raw_request(url, "GET", "/_sseproxy/health", {})
            assert health.status == 200
            assert not bomb.ended.is_set(), f"the bomb ended first ({bomb.received >> 20} MiB): nothing ran beside it"
        finally:
            bomb.sock.shutdown(socket.SHUT_RDWR)
            await reading
            bomb.sock.close()
            gate.release(None)


@pytest.mark.parametrize("kind", ["sse", "ndjson"])
async def test_a_reset_ending_a_close_delimited_body_is_an_upstream_error(
        kind: str, caplog: pytest.LogCaptureFixture) -> None:
    """A body delimited by the connection's close that ends with a reset is cut off, not complete:
    the error event (event streams), a truncated close, and outcome upstream_error."""
    content_type, first, half = {"sse": ("text/event-stream", b"data: 1\n\n", b"data: 2"),
                                 "ndjson": ("application/x-ndjson", b'{"a": 1}\n', b'{"b": ')}[kind]
    gate = Gate()

    async def close_delimited(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: " + content_type.encode() + b"\r\nConnection: close\r\n\r\n"
                     + first)
        await writer.drain()
        await gate.next()
        writer.write(half)
        await writer.drain()
        await gate.next()
        reset(writer)

    with caplog.at_level(logging.INFO, logger="sseproxy.access"):
        async with raw_proxy(close_delimited) as proxy:
            resp = await raw_request(proxy, "GET", "/", {})
            assert await resp.next_chunk() == first
            gate.release(b"")
            gate.release(b"")
            rest = b""
            with pytest.raises(Truncated):
                while (chunk := await resp.next_chunk()) is not None:
                    rest += chunk
            if kind == "sse":
                assert b"event: error" in rest and b"upstream_error" in rest
            assert half not in rest  # half an event or line is never passed on as if it were whole
            assert (await raw_request(proxy, "GET", "/_sseproxy/health", {})).status == 200
    lines = [r.access.fields() for r in caplog.records if r.name == "sseproxy.access"]  # type: ignore[attr-defined]
    assert lines[0]["outcome"] == "upstream_error"


async def test_a_close_delimited_body_ended_by_a_fin_is_complete() -> None:
    close_delimited = answers(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
                              b"data: 1\n\n")
    async with raw_proxy(close_delimited) as proxy:
        resp = await raw_request(proxy, "GET", "/", {})
        assert await resp.body() == b"data: 1\n\n"


async def test_a_101_to_a_plain_request_is_a_502() -> None:
    async def switches(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\nraw bytes")
        await writer.drain()
        await asyncio.sleep(WAIT)

    async with raw_server(switches) as up, running_app(echo_app()) as echo, running_proxy({"routes": [
            {"path": "/echo", "upstream": echo}, {"upstream": up}]}) as (proxy, _):
        resp = await raw_request(proxy, "GET", "/", {})
        assert resp.status == 502
        assert json.loads(await resp.body())["error"]["type"] == "upstream_unavailable"
        assert (await raw_request(proxy, "GET", "/echo/x", {})).status == 200


async def test_a_flood_of_interim_responses_is_a_502() -> None:
    async def early_hints(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        with contextlib.suppress(ConnectionError):
            for _ in range(200):  # bounded: 200 writes of 1,000 hints each
                writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" * 1000)
                await writer.drain()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    async with raw_proxy(early_hints) as proxy:
        resp = await raw_request(proxy, "GET", "/", {})
        assert resp.status == 502
        body = json.loads(await resp.body())
        assert body["error"]["type"] == "upstream_unavailable" and "interim" in body["error"]["message"].lower()


async def test_a_few_interim_responses_pass_before_the_final_one() -> None:
    two_hints = answers(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" * 2
                        + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    async with raw_proxy(two_hints) as proxy:
        resp = await raw_request(proxy, "GET", "/", {})
        assert resp.status == 200 and await resp.body() == b"ok"


async def test_a_control_character_in_an_upstream_header_is_a_502_not_a_500() -> None:
    async with raw_proxy(answers(b"HTTP/1.1 200 OK\r\nX-Bad: a\x01b\r\nContent-Length: 2\r\n\r\nok")) as proxy:
        resp = await raw_request(proxy, "GET", "/", {})
        assert resp.status == 502
        assert json.loads(await resp.body())["error"]["type"] == "upstream_unavailable"


async def test_a_request_head_over_max_header_size_gets_431_and_others_are_served(
        caplog: pytest.LogCaptureFixture) -> None:
    async with running_app(echo_app()) as up, running_proxy(
            {"max_header_size": "4KiB", "routes": [{"upstream": up}]}) as (proxy, runtime):
        host, port = proxy.removeprefix("http://").rsplit(":", 1)
        with caplog.at_level(logging.INFO, logger="sseproxy.access"):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"GET / HTTP/1.1\r\nHost: " + f"{host}:{port}".encode() + b"\r\n")
            for i in range(10):  # 10 headers of 1 KiB: over the 4 KiB cap, each line under aiohttp's own
                writer.write(f"X-Big-{i}: {'v' * 1000}\r\n".encode())
            await writer.drain()
            head = await read_head(reader)
            assert head.startswith(b"HTTP/1.1 431")
            body = json.loads(await asyncio.wait_for(reader.read(), WAIT))
            assert body["error"]["type"] == "header_too_large"
            writer.close()
            ok = await raw_request(proxy, "GET", "/", {"X-Small": "v" * 1000})  # under the cap: served
            assert ok.status == 200
        text = runtime.metrics.render().decode()
    lines = [r.access.fields() for r in caplog.records if r.name == "sseproxy.access"]  # type: ignore[attr-defined]
    assert lines[0]["status"] == 431 and lines[0]["outcome"] == "refused"
    assert 'status="431"' in text


async def test_a_head_the_parser_refuses_is_one_log_line_never_a_traceback_with_the_token() -> None:
    token = "inbound-token-0123456789abcdef"
    async with running_app(echo_app()) as up:
        config = {"inbound_auth": {"tokens": [token]}, "routes": [{"upstream": up}]}
        import yaml
        path = Path(tempfile.mkdtemp()) / "c.yaml"
        path.write_text(yaml.safe_dump({"listen": "127.0.0.1:0", **config}))
        async with sseproxy_process("serve", "--config", str(path)) as (proc, url):
            resp = await raw_request(url, "GET", "/", {"Authorization": f"Bearer {token}\x01"})
            assert resp.status == 400
            assert json.loads(await resp.body())["error"]["type"] == "bad_request"
            ok = await raw_request(url, "GET", "/", {"Authorization": f"Bearer {token}"})
            assert ok.status == 200
            proc.send_signal(signal.SIGTERM)
            assert proc.stderr is not None
            err = (await asyncio.wait_for(proc.stderr.read(), WAIT * 2)).decode()
    assert token not in err
    assert "Traceback" not in err
    refused = [line for line in err.splitlines() if "status=400" in line]
    assert len(refused) == 1 and "outcome=refused" in refused[0]


async def test_a_transfer_coding_other_than_chunked_is_501() -> None:
    async with running_app(echo_app()) as up, running_proxy({"routes": [{"upstream": up}]}) as (proxy, _):
        resp = await raw_request(proxy, "POST", "/", {"Transfer-Encoding": "gzip, chunked"},
                                 body=b"5\r\nhello\r\n0\r\n\r\n")
        assert resp.status == 501
        assert json.loads(await resp.body())["error"]["type"] == "not_implemented"
        ok = await raw_request(proxy, "POST", "/", {"Transfer-Encoding": "chunked"}, body=b"5\r\nhello\r\n0\r\n\r\n")
        assert ok.status == 200 and json.loads(await ok.body())["body_size"] == 5


async def test_options_with_preflight_headers_on_a_route_without_cors_keeps_its_methods() -> None:
    async with running_app(echo_app()) as up, running_proxy({"routes": [
            {"path": "/", "upstream": up, "methods": ["GET"]}]}) as (proxy, _):
        resp = await raw_request(proxy, "OPTIONS", "/", {"Origin": "http://a.localhost",
                                                        "Access-Control-Request-Method": "GET"})
        assert resp.status == 405


async def test_admin_endpoints_follow_allowed_hosts() -> None:
    async with running_app(echo_app()) as up, running_proxy({"routes": [{"upstream": up}]}) as (proxy, _):
        resp = await raw_request(proxy, "GET", "/_sseproxy/metrics", {"Host": "evil.example"})
        assert resp.status == 403
        assert (await raw_request(proxy, "GET", "/_sseproxy/health", {})).status == 200


def test_tap_shows_control_characters_cuts_names_and_redacts_secrets() -> None:
    out = io.StringIO()
    tap = Tap(out, color=False, redact=Redactor(["sk-injected-0123456789"]))
    tap.frames("chat", 1, b"event: " + b"n" * 70_000 + b"\ndata: \x1b[2Jboom\x00 key sk-injected-0123456789\n\n",
               sse=True)
    line = out.getvalue()
    assert line.count("\n") == 1 and len(line) < 300  # one bounded line for a 70 KB event name
    assert "\x1b" not in line and "\x00" not in line and "\\x1b[2Jboom\\x00" in line
    assert "sk-injected" not in line and "<redacted>" in line


async def test_tap_through_a_running_proxy_never_prints_an_injected_key_the_upstream_echoes() -> None:
    key = "sk-injected-0123456789abcdef"
    gate = Gate()
    async with running_app(gated_stream_app(gate, "text/event-stream")) as up:
        path = Path(tempfile.mkdtemp()) / "c.yaml"
        path.write_text(f"listen: 127.0.0.1:0\nroutes:\n  - upstream: '{up}'\n"
                        f"    request_headers: {{set: {{Authorization: 'Bearer {key}'}}}}\n")
        async with sseproxy_process("serve", "--tap", "--config", str(path)) as (proc, url):
            stream = await raw_request(url, "GET", "/", {})
            gate.release(f"data: the key is {key}\n\n".encode())
            assert key.encode() in await stream.next_chunk()  # relayed untouched: the tap only prints
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), WAIT)).decode()
            gate.release(None)
    assert key not in line and "<redacted>" in line


@pytest.mark.parametrize("method,answer,relayed", [
    ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Head: 1\r\n\r\nhello", b""),
    ("GET", b"HTTP/1.1 204 No Content\r\nX-Head: 1\r\n\r\nbody", b""),
    ("GET", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Head: 1\r\n\r\nokEXTRA", b"ok"),
], ids=["head-with-body", "204-with-body", "short-content-length"])
async def test_a_complete_response_with_extra_bytes_is_relayed_and_its_connection_closed(
        method: str, answer: bytes, relayed: bytes) -> None:
    """Bytes after a complete response, in the same read, do not turn it into a 502: it is relayed
    whole, and the connection that carried the extra bytes is closed (as nginx and Go do)."""
    connections = 0

    async def extra(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            await read_head(reader)
            writer.write(answer)
            await writer.drain()

    async with raw_proxy(extra) as proxy:
        for _ in range(2):
            resp = await raw_request(proxy, method, "/", {})
            assert resp.status == int(answer.split(b" ")[1]) and resp.headers["x-head"] == "1"
            if method != "HEAD":
                assert await resp.body() == relayed
    assert connections == 2  # never reused after the extra bytes


async def test_extra_bytes_after_a_resumable_stream_never_reach_the_pooled_connection() -> None:
    """A resumable stream's producer releases its upstream connection from inside the read that ended
    the body; a second response in that same read must not be parsed into the connection now in the
    pool (the next request would get it, or wait on a parser left mid-message): it is closed instead."""
    connections = 0
    gate = Gate()
    stale = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"

    async def extra(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                await read_head(reader)
                writer.write(SSE_HEAD + chunk(b"data: one\n\n"))
                await gate.next()  # the producer is attached: the end and the extra bytes come in one read
                writer.write(b"0\r\n\r\n" + stale + chunk(b"data: stale\n\n"))
                await writer.drain()

    async with raw_proxy(extra, resume=True) as proxy:
        for _ in range(2):
            resp = await raw_request(proxy, "GET", "/", {"Accept": "text/event-stream"})
            assert resp.status == 200
            assert b"data: one" in await resp.next_event()
            gate.release(b"")
            rest = await resp.body()
            assert b"stale" not in rest
            resp.close()
    assert connections == 2  # the connection that carried the extra bytes was not reused


class FailingOnce:
    """A feature whose hook raises on the first body it is shown (a defect in it, not in the upstream)."""

    def __init__(self) -> None:
        self.failed = False

    def open(self, info: ExchangeInfo) -> FailingOnce:
        return self

    def request_body(self, chunk: bytes) -> None:
        pass

    def response(self, status: int, headers: object, kind: object) -> None:
        pass

    def data(self, chunk: bytes, at: float, frames: int) -> None:
        if not self.failed:
            self.failed = True
            raise RuntimeError("a defect in a feature")

    def end(self, record: object) -> None:
        pass


async def test_a_hook_that_raises_ends_its_stream_with_an_error_event_and_is_logged_as_the_proxys(
        caplog: pytest.LogCaptureFixture) -> None:
    """The relay's callback catches it: the client gets the error event and a truncated end, the log
    says it was the proxy's failure, and the next stream is relayed."""
    gates = [Gate(), Gate()]  # one per upstream connection, in the order they come
    served = 0

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        gate, served = gates[served], served + 1
        await read_head(reader)
        writer.write(SSE_HEAD)
        with contextlib.suppress(ConnectionError):
            while (event := await gate.next()) is not None:  # after the head: the relay is attached
                writer.write(chunk(event))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    async with raw_server(upstream) as origin, running_proxy({"routes": [{"upstream": origin}]}) as (proxy, runtime):
        runtime.hooks = (*runtime.hooks, FailingOnce())
        with caplog.at_level(logging.ERROR, logger="sseproxy"):
            resp = await raw_request(proxy, "GET", "/", {})
            gates[0].release(b"data: one\n\n")
            assert await resp.next_event() == b"data: one\n\n"  # written before the hooks are told of it
            event = await resp.next_event()
            assert event.startswith(b"event: error") and b"upstream_error" in event
            with pytest.raises(Truncated):
                await resp.next_chunk()
        assert any("internal error while relaying" in r.getMessage() for r in caplog.records)
        again = await raw_request(proxy, "GET", "/", {})
        gates[1].release(b"data: two\n\n")
        assert await again.next_event() == b"data: two\n\n"
        gates[1].release(None)
        assert await again.next_chunk() is None
        again.close()
