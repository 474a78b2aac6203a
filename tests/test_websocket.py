"""The WebSocket relay against a real aiohttp WebSocket upstream."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from helpers import WAIT, raw_request, running_app, running_proxy


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
    events: list[Any] = []
    async with running_app(ws_upstream(events)) as up, running_proxy(
            {"routes": [{"upstream": up, "websocket": False}]}) as (proxy, _), aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await open_ws(session, f"{proxy}/")


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
        resp = await raw_request(proxy, "GET", "/", {"Connection": "Upgrade", "Upgrade": "websocket",
                                                     "Sec-WebSocket-Version": "13",
                                                     "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
        error = json.loads(await resp.body())["error"]
        assert error["type"] == "upstream_unavailable"
        assert error["message"] == "upstream refused the WebSocket handshake with 403"
