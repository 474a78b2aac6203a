"""Routing and relaying through a running proxy: paths, hosts, methods, headers, bodies."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web
from helpers import WAIT, Gate, raw_request, running_app, running_proxy
from upstreams import echo_app


async def echo_through(routes: list[dict[str, Any]], method: str, target: str,
                       headers: dict[str, str] | None = None, body: bytes = b"",
                       **config: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
    seen: list[dict[str, Any]] = []
    async with running_app(echo_app(seen)) as up:
        for route in routes:
            route.setdefault("upstream", up)
            route["upstream"] = route["upstream"].replace("UP", up)
        async with running_proxy({"routes": routes, **config}) as (proxy, _):
            resp = await raw_request(proxy, method, target, headers or {}, body)
            raw = await resp.body()
    return resp.status, (json.loads(raw) if resp.status == 200 else json.loads(raw)["error"]), resp.headers


async def test_whole_segment_prefixes_first_match_wins_and_base_paths_join() -> None:
    routes = [{"name": "api", "path": "/api", "upstream": "UP/v1"},
              {"name": "keep", "path": "/keep", "upstream": "UP/base/", "strip_prefix": False},
              {"name": "root", "path": "/", "upstream": "UP"}]
    cases = {
        "/api": "/v1", "/api/": "/v1/", "/api/chat/completions": "/v1/chat/completions",
        "/apix": "/apix", "/keep/x": "/base/keep/x", "/": "/", "/other/y": "/other/y",
    }
    for target, expected in cases.items():
        status, info, _ = await echo_through([dict(r) for r in routes], "GET", target + "?q=1&q=2")
        assert status == 200
        assert info["path"] == expected, target
        assert info["query"] == "q=1&q=2"


async def test_host_and_method_matching() -> None:
    routes = [{"name": "a", "path": "/", "host": "api.localhost", "upstream": "UP/a"},
              {"name": "post", "path": "/p", "methods": ["post"], "upstream": "UP/post"},
              {"name": "rest", "path": "/", "upstream": "UP/rest"}]
    status, info, _ = await echo_through([dict(r) for r in routes], "GET", "/x", {"Host": "api.localhost:8080"})
    assert info["path"] == "/a/x"
    status, info, _ = await echo_through([dict(r) for r in routes], "POST", "/p", {"Host": "localhost"})
    assert info["path"] == "/post"
    status, info, _ = await echo_through([dict(r) for r in routes], "GET", "/p", {"Host": "localhost"})
    assert info["path"] == "/rest/p"  # a later route that takes GET serves it
    status, info, headers = await echo_through([dict(r) for r in routes[1:2]], "GET", "/p", {"Host": "localhost"})
    assert status == 405 and info["type"] == "method_not_allowed" and headers["allow"] == "POST"


async def test_request_headers_hop_by_hop_then_remove_then_set_add_and_forwarded() -> None:
    routes = [{"path": "/", "request_headers": {
        "set": {"Authorization": "Bearer injected"}, "add": {"X-Added": "1"}, "remove": ["Cookie"]}}]
    _status, info, _ = await echo_through(routes, "GET", "/", {
        "Connection": "keep-alive, X-Hop, authorization", "X-Hop": "gone", "Keep-Alive": "timeout=5",
        "TE": "trailers", "Authorization": "Bearer client", "Cookie": "a=b", "X-Added": "0",
        "X-Forwarded-For": "10.1.1.1", "Upgrade": "h2c", "Proxy-Authorization": "x"})
    headers = {k.lower(): v for k, v in info["headers"].items()}
    for gone in ("x-hop", "keep-alive", "te", "cookie", "upgrade", "proxy-authorization"):
        assert gone not in headers, gone
    assert headers["authorization"] == "Bearer injected"  # no client header can strip or override it
    assert [v for k, v in info["header_list"] if k.lower() == "x-added"] == ["0", "1"]  # kept, then added
    assert headers["x-forwarded-for"] == "127.0.0.1"  # the client's own claim is dropped: it is not trusted
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"].startswith("127.0.0.1:")
    assert headers["host"] == info["host"] and headers["host"] != headers["x-forwarded-host"]


async def test_preserve_host_and_forwarded_off() -> None:
    routes = [{"path": "/", "preserve_host": True, "forwarded": False}]
    _status, info, _ = await echo_through(routes, "GET", "/", {"Host": "app.localhost:9"})
    headers = {k.lower(): v for k, v in info["headers"].items()}
    assert headers["host"] == "app.localhost:9"
    assert "x-forwarded-for" not in headers


async def test_response_headers_hop_by_hop_and_rules() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text="ok", headers={"Connection": "X-Private", "X-Private": "secret-ish",
                                                "Keep-Alive": "timeout=1", "X-Drop": "1", "X-Keep": "1"})

    app = web.Application()
    app.router.add_get("/", handler)
    async with running_app(app) as up, running_proxy({"routes": [{"upstream": up, "response_headers": {
            "remove": ["X-Drop"], "set": {"X-Frame-Options": "DENY"}, "add": {"X-Keep": "2"}}}]}) as (proxy, _):
        resp = await raw_request(proxy, "GET", "/", {})
        assert await resp.body() == b"ok"
    assert "x-private" not in resp.headers and "keep-alive" not in resp.headers and "x-drop" not in resp.headers
    assert resp.headers["x-frame-options"] == "DENY"
    assert resp.headers["x-keep"] == "1, 2"
    assert resp.headers["content-length"] == "2"


async def test_request_body_is_streamed_not_read_whole() -> None:
    received = Gate()

    async def upload(request: web.Request) -> web.Response:
        total = 0
        async for chunk in request.content.iter_any():
            total += len(chunk)
            received.release(chunk)
        return web.json_response({"total": total})

    app = web.Application()
    app.router.add_post("/", upload)
    async with running_app(app) as up, running_proxy({"routes": [{"upstream": up}]}) as (proxy, _):
        host, port = proxy.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        assert await asyncio.wait_for(received.next(), WAIT) == b"first"  # upstream has it; the rest unsent
        writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        assert head.startswith(b"HTTP/1.1 200")
        writer.close()


async def test_declared_content_length_is_kept_toward_the_upstream() -> None:
    _status, info, _ = await echo_through([{"path": "/"}], "PUT", "/", {"Content-Type": "text/plain"}, b"x" * 5000)
    assert info["body_size"] == 5000
    assert info["headers"]["Content-Length"] == "5000"
    assert "Transfer-Encoding" not in info["headers"]


async def test_non_stream_bodies_are_relayed_as_they_arrive() -> None:
    gate = Gate()

    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = 10
        await response.prepare(request)
        while (part := await gate.next()) is not None:
            await response.write(part)
        return response

    app = web.Application()
    app.router.add_get("/", big)
    async with running_app(app) as up, running_proxy({"routes": [{"upstream": up}]}) as (proxy, _):
        resp = await raw_request(proxy, "GET", "/", {})
        assert resp.headers["content-length"] == "10"
        gate.release(b"01234")
        assert await asyncio.wait_for(resp.reader.readexactly(5), WAIT) == b"01234"  # before the rest exists
        gate.release(b"56789")
        gate.release(None)
        assert await asyncio.wait_for(resp.reader.readexactly(5), WAIT) == b"56789"


async def test_one_pooled_upstream_connection_is_reused_across_requests() -> None:
    peers: list[object] = []

    async def who(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", who)
    async with running_app(app) as up, running_proxy({"routes": [{"upstream": up}]}) as (proxy, _):
        for _ in range(3):
            resp = await raw_request(proxy, "GET", "/", {})
            assert await resp.body() == b"ok"
            resp.close()
    assert len(peers) == 3 and peers[0] == peers[1] == peers[2]  # same upstream connection each time
