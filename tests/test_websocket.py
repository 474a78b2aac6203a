"""The WebSocket relay against a real aiohttp WebSocket upstream."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from helpers import WAIT, raw_request, running_app, running_proxy
from procs import sseproxy_process
from upstreams import echo_app, raw_proxy


def ws_upstream(events: list[Any]) -> web.Application:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("vite-hmr", "other"))
        await ws.prepare(request)
        events.append(("open", request.path_qs, request.headers.get("Authorization"), ws.ws_protocol))
        close_code = None
        for _ in range(1000):  # bounded session
            msg = await ws.receive()
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                close_code = msg.data if msg.type is WSMsgType.CLOSE else ws.close_code
                break
            if msg.type is WSMsgType.TEXT:
                if msg.data == "die":
                    assert request.transport is not None
                    request.transport.abort()
                    break
                if msg.data.startswith("close:"):
                    await ws.close(code=int(msg.data[6:]), message=b"upstream says bye")
                    break
                await ws.send_str("echo:" + msg.data)
            elif msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
        events.append(("closed", close_code))
        return ws

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    return app


HANDSHAKE = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
             "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


async def open_ws(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> aiohttp.ClientWebSocketResponse:
    return await asyncio.wait_for(session.ws_connect(url, **kwargs), WAIT)


async def wait_for(events: list[Any], predicate: Any) -> Any:
    for _ in range(100):  # bounded: 5 s at most
        for event in events:
            if predicate(event):
                return event
        await asyncio.sleep(0.05)
    raise AssertionError(f"not seen in {events}")


async def test_text_binary_ping_subprotocol_path_and_injected_headers() -> None:
    events: list[Any] = []
    async with running_app(ws_upstream(events)) as up, running_proxy({"routes": [{
            "path": "/hmr", "upstream": f"{up}/base", "request_headers": {"set": {"Authorization": "Bearer k"}}}]}
            ) as (proxy, _), aiohttp.ClientSession() as session:
        ws = await open_ws(session, f"{proxy}/hmr/socket?token=abc", protocols=("vite-hmr",), autoping=False)
        assert ws.protocol == "vite-hmr"  # the negotiated subprotocol came back through the proxy
        await ws.send_str("hello")
        assert (await ws.receive(WAIT)).data == "echo:hello"
        await ws.send_bytes(b"\x00\x01\x02")
        assert (await ws.receive(WAIT)).data == b"\x02\x01\x00"
        await ws.ping(b"p1")
        pong = await ws.receive(WAIT)
        assert (pong.type, pong.data) == (WSMsgType.PONG, b"p1")  # the upstream's own pong, relayed
        await ws.close()
    assert events[0] == ("open", "/base/socket?token=abc", "Bearer k", "vite-hmr")


async def test_close_codes_pass_both_ways() -> None:
    events: list[Any] = []
    async with running_app(ws_upstream(events)) as up, running_proxy({"routes": [{"upstream": up}]}) as (proxy, _), \
            aiohttp.ClientSession() as session:
        ws = await open_ws(session, f"{proxy}/a")
        await ws.close(code=4001, message=b"client says bye")
        assert await wait_for(events, lambda e: e[0] == "closed") == ("closed", 4001)

        ws = await open_ws(session, f"{proxy}/b")
        await ws.send_str("close:4002")
        msg = await ws.receive(WAIT)
        assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 4002, "upstream says bye")


async def test_upstream_dying_mid_session_closes_the_client() -> None:
    events: list[Any] = []
    async with running_app(ws_upstream(events)) as up, running_proxy({"routes": [{"upstream": up}]}) as (proxy, _), \
            aiohttp.ClientSession() as session:
        ws = await open_ws(session, f"{proxy}/")
        await ws.send_str("die")
        msg = await ws.receive(WAIT)
        assert msg.type is WSMsgType.CLOSE and msg.data == 1011
        other = await open_ws(session, f"{proxy}/")  # the proxy keeps serving
        await other.send_str("still")
        assert (await other.receive(WAIT)).data == "echo:still"
        await other.close()


async def test_client_vanishing_closes_the_upstream() -> None:
    events: list[Any] = []
    async with running_app(ws_upstream(events)) as up, running_proxy({"routes": [{"upstream": up}]}) as (proxy, _), \
            aiohttp.ClientSession() as session:
        ws = await open_ws(session, f"{proxy}/")
        await ws.send_str("x")
        await ws.receive(WAIT)
        assert ws._response.connection is not None
        ws._response.connection.transport.abort()  # no close frame: the TCP connection just drops
        await wait_for(events, lambda e: e[0] == "closed")


@pytest.mark.parametrize("origin,status", [("http://localhost:5173", 101), ("http://evil.example", 403), (None, 101)])
async def test_cross_site_websocket_hijacking_is_refused_where_cors_is_configured(origin: str | None,
                                                                                    status: int) -> None:
    events: list[Any] = []
    config = {"cors": {"allow_origins": ["http://localhost:5173"]}, "routes": [{"upstream": ""}]}
    async with running_app(ws_upstream(events)) as up:
        config["routes"][0]["upstream"] = up  # type: ignore[index]
        async with running_proxy(config) as (proxy, _), aiohttp.ClientSession() as session:
            if status == 101:
                ws = await open_ws(session, f"{proxy}/", origin=origin)
                await ws.close()
            else:
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await open_ws(session, f"{proxy}/", origin=origin)
                assert refused.value.status == 403
                assert events == []


async def test_websocket_false_does_not_relay_the_upgrade() -> None:
    seen: list[dict[str, Any]] = []
    async with running_app(echo_app(seen)) as up, running_proxy(
            {"routes": [{"upstream": up, "websocket": False}]}) as (proxy, _), aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await open_ws(session, f"{proxy}/")
        assert (refused.value.status, refused.value.message) == (200, "Invalid response status")
        resp = await raw_request(proxy, "GET", "/x", HANDSHAKE)
        assert resp.status == 200 and resp.headers["x-upstream"] == "echo"  # a plain GET, answered by the upstream
        headers = {k.lower(): v for k, v in json.loads(await resp.body())["headers"].items()}
    assert "upgrade" not in headers and "upgrade" not in headers.get("connection", "").lower()
    assert len(seen) == 2


async def test_an_upstream_refusing_the_handshake_is_502_naming_its_status() -> None:
    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=403, text="no websockets here")

    app = web.Application()
    app.router.add_get("/", refuse)
    async with running_app(app) as up, running_proxy({"routes": [{"upstream": up}]}) as (proxy, _), \
            aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await open_ws(session, f"{proxy}/")
        assert refused.value.status == 502
        resp = await raw_request(proxy, "GET", "/", HANDSHAKE)
        error = json.loads(await resp.body())["error"]
        assert error["type"] == "upstream_unavailable"
        assert error["message"] == "upstream refused the WebSocket handshake with 403"


@pytest.mark.parametrize("method,change,problem", [
    ("GET", {"Sec-WebSocket-Key": None}, "Sec-WebSocket-Key"),
    ("GET", {"Sec-WebSocket-Key": "c2hvcnQ="}, "Sec-WebSocket-Key"),  # 5 bytes, not 16
    ("GET", {"Sec-WebSocket-Key": "not base64 at all!!!!!!="}, "Sec-WebSocket-Key"),
    ("GET", {"Sec-WebSocket-Version": None}, "Sec-WebSocket-Version"),
    ("GET", {"Sec-WebSocket-Version": "99"}, "Sec-WebSocket-Version"),
    ("GET", {"Connection": "keep-alive"}, "Connection"),
    ("POST", {}, "GET"),
])
async def test_an_invalid_client_handshake_is_400_before_any_upstream_connection(
        method: str, change: dict[str, str | None], problem: str) -> None:
    connections: list[bytes] = []

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(await reader.read(1024))

    headers = {k: v for k, v in {**HANDSHAKE, **change}.items() if v is not None}
    async with raw_proxy(upstream) as proxy:
        resp = await raw_request(proxy, method, "/hmr", headers)
        assert resp.status == 400 and resp.headers["content-type"].startswith("application/json")
        error = json.loads(await resp.body())["error"]
        assert error["type"] == "bad_request" and problem in error["message"]
        assert error["route"] == "/"
    assert connections == []  # the upstream was never contacted


@pytest.mark.parametrize("closer", ["client", "upstream"])
async def test_a_normal_close_is_logged_ok_with_frames_and_bytes(closer: str, caplog: pytest.LogCaptureFixture) -> None:
    events: list[Any] = []
    async with running_app(ws_upstream(events)) as up, running_proxy({"routes": [{"upstream": up}]}) as (proxy, _), \
            aiohttp.ClientSession() as session:
        with caplog.at_level(logging.INFO, logger="sseproxy.access"):
            ws = await open_ws(session, f"{proxy}/hmr")
            await ws.send_str("héllo")
            assert (await ws.receive(WAIT)).data == "echo:héllo"  # 11 bytes of UTF-8
            await ws.send_bytes(b"\x00\x01\x02")
            assert (await ws.receive(WAIT)).data == b"\x02\x01\x00"
            if closer == "client":
                await ws.close()
            else:
                await ws.send_str("close:1000")
                msg = await ws.receive(WAIT)
                assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1000)
            for _ in range(100):  # bounded: until the request has ended and been logged
                lines = [r for r in caplog.records if r.name == "sseproxy.access"]
                if lines:
                    break
                await asyncio.sleep(0.05)
    assert len(lines) == 1
    fields = lines[0].access.fields()  # type: ignore[attr-defined]
    assert (fields["status"], fields["outcome"]) == (101, "ok")
    assert fields["bytes"] == 11 + 3  # to the client
    assert fields["events"] == (4 if closer == "client" else 5)  # frames both ways
    assert "outcome=ok" in lines[0].getMessage()


async def test_each_way_a_websocket_ends_is_logged_with_its_outcome(caplog: pytest.LogCaptureFixture) -> None:
    events: list[Any] = []
    async with running_app(ws_upstream(events)) as up, running_proxy({"routes": [{"upstream": up}]}) as (proxy, _), \
            aiohttp.ClientSession() as session:
        with caplog.at_level(logging.INFO, logger="sseproxy.access"):
            ws = await open_ws(session, f"{proxy}/app-code")
            await ws.close(code=4001)
            ws = await open_ws(session, f"{proxy}/too-big")
            await ws.send_bytes(bytes(1024 * 1024 + 1))
            assert (await ws.receive(WAIT)).data == 1009
            ws = await open_ws(session, f"{proxy}/upstream-dies")
            await ws.send_str("die")
            assert (await ws.receive(WAIT)).data == 1011
            ws = await open_ws(session, f"{proxy}/vanishes")
            await ws.send_str("x")
            await ws.receive(WAIT)
            assert ws._response.connection is not None
            ws._response.connection.transport.abort()
            for _ in range(100):  # bounded: until all four have ended and been logged
                lines = [r.access.fields() for r in caplog.records if r.name == "sseproxy.access"]  # type: ignore[attr-defined]
                if len(lines) == 4:
                    break
                await asyncio.sleep(0.05)
    outcomes = {line["path"]: (line["outcome"], line["error"]) for line in lines}
    assert outcomes["/app-code"] == ("client_closed", None)
    assert outcomes["/too-big"][0] == "refused" and "1048577" in outcomes["/too-big"][1]
    assert outcomes["/upstream-dies"] == ("upstream_error", "upstream WebSocket connection lost")
    assert outcomes["/vanishes"] == ("client_closed", None)


async def test_normal_closes_are_logged_ok_by_a_running_sseproxy() -> None:
    """The same through the real process (on uvloop a client's close answer and its hang-up arrive
    together, and aiohttp cancels the handler at once)."""
    events: list[Any] = []
    async with running_app(ws_upstream(events)) as up, sseproxy_process(
            "serve", "--listen", "127.0.0.1:0", "--route", f"/={up}") as (proc, url), \
            aiohttp.ClientSession() as session:
        for closer in ("client", "upstream"):
            ws = await open_ws(session, f"{url}/{closer}")
            if closer == "client":
                await ws.close()
            else:
                await ws.send_str("close:1001")
                assert (await ws.receive(WAIT)).data == 1001
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), WAIT) == 0
        assert proc.stderr is not None
        log = (await proc.stderr.read()).decode()
    lines = [line for line in log.splitlines() if "sseproxy.access" in line]
    assert len(lines) == 2 and all("status=101" in line and "outcome=ok" in line for line in lines), lines


async def test_an_upstream_redirecting_the_handshake_is_502_and_never_followed() -> None:
    events: list[Any] = []
    async with running_app(ws_upstream(events)) as elsewhere:
        async def redirect(request: web.Request) -> web.Response:
            raise web.HTTPFound(f"{elsewhere}/elsewhere")

        app = web.Application()
        app.router.add_get("/{tail:.*}", redirect)
        async with running_app(app) as up, running_proxy({"routes": [
                {"upstream": up, "request_headers": {"set": {"X-Api-Key": "k"}}}]}) as (proxy, _):
            resp = await raw_request(proxy, "GET", "/", HANDSHAKE)
            assert resp.status == 502
            error = json.loads(await resp.body())["error"]
    assert error["type"] == "upstream_unavailable" and "302" in error["message"]
    assert events == []  # the injected key never went to where the upstream pointed
