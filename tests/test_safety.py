"""Never an open proxy: raw request targets are checked before routing, the upstream always comes
from the config, and a client that dribbles its request head is closed while others are served."""

from __future__ import annotations

import asyncio
import json

import pytest
from helpers import WAIT, raw_request, running_app, running_proxy
from upstreams import echo_app


@pytest.mark.parametrize("method,target", [
    ("CONNECT", "example.com:443"),
    ("GET", "http://example.com/"),
    ("GET", "/a/../b"),
    ("GET", "/a/.."),
    ("GET", "/a/%2e%2e/b"),
    ("GET", "/a/%2E%2e/b"),
    ("GET", "/a/.%2e/b"),
    ("GET", "/a/%2fetc"),
    ("GET", "/a/%2F"),
    ("GET", "/a/%5c..%5cb"),
    ("GET", "/a\\b"),
    ("GET", "/a/%00"),
    ("GET", "/a/./b"),
    ("GET", "/a/..;/b"),          # a path parameter on a dot segment: Tomcat and Jetty read it as ".."
    ("GET", "/a/%2e%2e;x/b"),
    ("GET", "/a/.;x/b"),
    ("GET", "/a/..%3bx/b"),
    ("GET", "/a/b#frag"),         # no fragment belongs in a request target
    ("GET", "/a#/../../b"),
    ("GET", "/a?q=1#x"),
])
async def test_bad_targets_are_refused_with_400_before_routing(method: str, target: str) -> None:
    seen: list[dict[str, object]] = []
    async with running_app(echo_app(seen)) as up, running_proxy({"routes": [{"upstream": up}]}) as (proxy, _):
        resp = await raw_request(proxy, method, target, {})
        assert resp.status == 400
        assert json.loads(await resp.body())["error"]["type"] == "bad_request"
        ok = await raw_request(proxy, "GET", "/fine", {})
        assert ok.status == 200
    assert [s["path"] for s in seen] == ["/fine"]


async def test_path_and_query_are_forwarded_exactly_as_encoded() -> None:
    seen: list[dict[str, object]] = []
    async with running_app(echo_app(seen)) as up, running_proxy({"routes": [{"upstream": up}]}) as (proxy, _):
        resp = await raw_request(proxy, "GET", "/a%20b/c%3Fd?x=1&y=%2F&z", {})
        assert resp.status == 200
    assert seen[0]["path"] == "/a%20b/c%3Fd"
    assert seen[0]["query"] == "x=1&y=%2F&z"


async def test_absolute_form_for_this_host_is_routed_and_the_upstream_never_comes_from_the_request() -> None:
    seen: list[dict[str, object]] = []
    async with running_app(echo_app(seen)) as up, running_proxy({"routes": [{"upstream": up}]}) as (proxy, _):
        authority = proxy.removeprefix("http://")
        resp = await raw_request(proxy, "GET", f"http://{authority}/abs?q=1", {"Host": authority})
        assert resp.status == 200
        foreign = await raw_request(proxy, "GET", "http://127.0.0.2:1/x", {"Host": authority})
        assert foreign.status == 400
    assert seen[0]["path"] == "/abs" and seen[0]["query"] == "q=1"
    assert seen[0]["host"] == up.removeprefix("http://")  # Host is the upstream's, not the client's


async def test_a_slow_request_head_is_closed_while_others_are_served() -> None:
    async with running_app(echo_app()) as up, running_proxy(
            {"routes": [{"upstream": up}], "header_timeout": "300ms"}) as (proxy, _):
        host, port = proxy.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # and never the rest
        await writer.drain()
        for _ in range(3):  # meanwhile, other clients are served
            ok = await raw_request(proxy, "GET", "/", {})
            assert ok.status == 200
            ok.close()
        assert await asyncio.wait_for(reader.read(), WAIT) == b""  # the proxy closed the slow one
        writer.close()


async def test_an_idle_kept_alive_connection_can_send_another_request_within_the_deadline() -> None:
    async with running_app(echo_app()) as up, running_proxy(
            {"routes": [{"upstream": up}], "header_timeout": "2s"}) as (proxy, _):
        first = await raw_request(proxy, "GET", "/one", {})
        assert json.loads(await first.body())["path"] == "/one"
        first.writer.write(b"GET /two HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = await asyncio.wait_for(first.reader.readuntil(b"\r\n\r\n"), WAIT)
        assert head.startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("host", [
    "[::1]x", "[::1]:8080x", "[::1", "[not-v6]", "user@localhost", "localhost:abc", "localhost:99999",
    "localhost:123456", "localhost:-1", "", "local host", "a..localhost", ".localhost", "localhost:80:80",
    "localhost/x", "localhost\\x", "::1",
])
async def test_a_malformed_host_is_refused_with_400_and_never_forwarded(host: str) -> None:
    seen: list[dict[str, object]] = []
    async with running_app(echo_app(seen)) as up, running_proxy(
            {"routes": [{"upstream": up}], "allowed_hosts": ["*"]}) as (proxy, _):
        resp = await raw_request(proxy, "GET", "/x", {"Host": host})
        assert resp.status == 400, host
        assert json.loads(await resp.body())["error"]["type"] == "bad_request"
        ok = await raw_request(proxy, "GET", "/fine", {"Host": "localhost:8080"})
        assert ok.status == 200
    assert [(s["path"], s["headers"]["X-Forwarded-Host"]) for s in seen] == [  # type: ignore[index]
        ("/fine", "localhost:8080")]


@pytest.mark.parametrize("host,allowed", [
    ("LOCALHOST:8080", True), ("localhost", True), ("localhost:", True), ("localhost.", True), ("127.0.0.1:1", True),
    ("[::1]:8080", True), ("[::1]", True), ("ui.localhost:5173", True), ("my_app.localhost", True),
    ("evil.example:80", False),
])
async def test_well_formed_hosts_still_pass_the_host_check(host: str, allowed: bool) -> None:
    seen: list[dict[str, object]] = []
    async with running_app(echo_app(seen)) as up, running_proxy({"routes": [{"upstream": up}]}) as (proxy, _):
        resp = await raw_request(proxy, "GET", "/x", {"Host": host})
        assert resp.status == (200 if allowed else 403), host
    if allowed:
        assert seen[0]["headers"]["X-Forwarded-Host"] == host  # type: ignore[index]
