"""CORS, inbound auth, allowed hosts and redirect rewriting, through a running proxy."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from helpers import free_port, raw_request, running_app, running_proxy
from upstreams import echo_app

ORIGIN = "http://localhost:5173"
CORS = {"allow_origins": [ORIGIN], "expose_headers": ["X-Request-Id"]}


def cors_upstream(seen: list[str]) -> web.Application:
    """An upstream that sets its own (conflicting) CORS headers, as many dev backends do."""

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.method)
        return web.json_response({"ok": True}, headers={
            "Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "GET",
            "X-Request-Id": "r1", "Vary": "Accept-Encoding"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


async def test_browser_preflight_then_request() -> None:
    seen: list[str] = []
    async with running_app(cors_upstream(seen)) as up, running_proxy(
            {"cors": CORS, "routes": [{"upstream": up}]}) as (proxy, _):
        pre = await raw_request(proxy, "OPTIONS", "/api/chat", {
            "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, x-custom"})
        assert pre.status == 204
        assert pre.headers["access-control-allow-origin"] == ORIGIN
        assert pre.headers["vary"] == "Origin"
        assert "POST" in pre.headers["access-control-allow-methods"]
        assert pre.headers["access-control-allow-headers"] == "content-type, x-custom"  # "*" echoes them
        assert pre.headers["access-control-max-age"] == "600"
        assert "access-control-allow-credentials" not in pre.headers
        assert seen == []  # never forwarded

        resp = await raw_request(proxy, "POST", "/api/chat", {"Origin": ORIGIN}, b"{}")
        assert resp.status == 200
        assert seen == ["POST"]
        raw_head = resp.headers
        assert raw_head["access-control-allow-origin"] == ORIGIN  # exactly one: the upstream's "*" replaced
        assert "access-control-allow-methods" not in raw_head
        assert raw_head["access-control-expose-headers"] == "X-Request-Id"
        assert raw_head["vary"] == "Accept-Encoding, Origin"


async def test_refused_origins_and_methods() -> None:
    seen: list[str] = []
    async with running_app(cors_upstream(seen)) as up, running_proxy(
            {"cors": CORS, "routes": [{"upstream": up}]}) as (proxy, _):
        pre = await raw_request(proxy, "OPTIONS", "/", {"Origin": "http://evil.example",
                                                         "Access-Control-Request-Method": "GET"})
        assert pre.status == 403
        assert "access-control-allow-origin" not in pre.headers
        assert json.loads(await pre.body())["error"]["type"] == "forbidden"
        pre = await raw_request(proxy, "OPTIONS", "/", {"Origin": ORIGIN, "Access-Control-Request-Method": "TRACE"})
        assert pre.status == 403
        resp = await raw_request(proxy, "GET", "/", {"Origin": "http://evil.example"})
        assert resp.status == 200
        assert not any(k.startswith("access-control-") for k in resp.headers)  # no CORS headers at all
    assert seen == ["GET"]


async def test_credentials_wildcard_route_override_and_cors_false() -> None:
    seen: list[str] = []
    async with running_app(cors_upstream(seen)) as up:
        routes: list[dict[str, Any]] = [
            {"path": "/creds", "upstream": up, "cors": {"allow_origins": [ORIGIN], "allow_credentials": True,
                                                        "allow_headers": ["Content-Type"]}},
            {"path": "/any", "upstream": up, "cors": {"allow_origins": ["*"]}},
            {"path": "/off", "upstream": up, "cors": False},
        ]
        async with running_proxy({"cors": CORS, "routes": routes}) as (proxy, _):
            pre = await raw_request(proxy, "OPTIONS", "/creds", {"Origin": ORIGIN, "Access-Control-Request-Method":
                                                                 "PUT", "Access-Control-Request-Headers": "x-other"})
            assert pre.headers["access-control-allow-credentials"] == "true"
            assert pre.headers["access-control-allow-headers"] == "Content-Type"
            resp = await raw_request(proxy, "GET", "/any", {"Origin": "http://anything.example"})
            assert resp.headers["access-control-allow-origin"] == "http://anything.example"
            off = await raw_request(proxy, "GET", "/off", {"Origin": ORIGIN})
            assert off.headers["access-control-allow-origin"] == "*"  # the upstream's own, untouched
            pre_off = await raw_request(proxy, "OPTIONS", "/off", {"Origin": ORIGIN,
                                                                    "Access-Control-Request-Method": "GET"})
            assert pre_off.status == 200  # no CORS policy: the preflight is forwarded
    assert seen[-1] == "OPTIONS"


async def test_proxy_errors_carry_cors_headers_so_the_page_can_read_them() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with running_proxy({"cors": CORS, "routes": [{"upstream": dead}]}) as (proxy, _):
        resp = await raw_request(proxy, "GET", "/", {"Origin": ORIGIN})
        assert resp.status == 502
        assert resp.headers["access-control-allow-origin"] == ORIGIN


async def test_inbound_auth_tokens_and_exemptions() -> None:
    seen: list[dict[str, Any]] = []
    async with running_app(echo_app(seen)) as up, running_proxy({
            "inbound_auth": {"tokens": ["tok-one", "tok-two"]}, "cors": CORS,
            "routes": [{"upstream": up, "request_headers": {"set": {"Authorization": "Bearer injected-key"}}}]}
            ) as (proxy, _):
        missing = await raw_request(proxy, "GET", "/", {})
        assert missing.status == 401
        assert missing.headers["www-authenticate"] == "Bearer"
        assert json.loads(await missing.body())["error"]["type"] == "unauthorized"
        for bad in ("Bearer nope", "Basic dG9rLW9uZQ==", "tok-one", "Bearer tok-one-and-more"):
            wrong = await raw_request(proxy, "GET", "/", {"Authorization": bad})
            assert wrong.status == 401, bad
        right = await raw_request(proxy, "GET", "/", {"Authorization": "Bearer tok-two"})
        assert right.status == 200
        health = await raw_request(proxy, "GET", "/_sseproxy/health", {})
        assert health.status == 200
        pre = await raw_request(proxy, "OPTIONS", "/", {"Origin": ORIGIN, "Access-Control-Request-Method": "GET"})
        assert pre.status == 204
    assert len(seen) == 1
    assert seen[0]["headers"]["Authorization"] == "Bearer injected-key"  # the client's token never leaves


async def test_inbound_auth_in_a_custom_header_is_removed_before_forwarding() -> None:
    seen: list[dict[str, Any]] = []
    async with running_app(echo_app(seen)) as up, running_proxy({
            "inbound_auth": {"header": "X-Proxy-Token", "tokens": ["t0k"]}, "routes": [{"upstream": up}]}
            ) as (proxy, _):
        assert (await raw_request(proxy, "GET", "/", {"X-Proxy-Token": "nope"})).status == 401
        ok = await raw_request(proxy, "GET", "/", {"X-Proxy-Token": "t0k", "Authorization": "Bearer app"})
        assert ok.status == 200
    assert "X-Proxy-Token" not in seen[0]["headers"]
    assert seen[0]["headers"]["Authorization"] == "Bearer app"


async def test_injected_keys_survive_connection_tricks() -> None:
    seen: list[dict[str, Any]] = []
    async with running_app(echo_app(seen)) as up, running_proxy({"routes": [{"upstream": up, "request_headers": {
            "set": {"Authorization": "Bearer sk-x", "x-api-key": "ant-x", "api-key": "azure-x"}}}]}) as (proxy, _):
        resp = await raw_request(proxy, "GET", "/", {"Connection": "authorization, x-api-key, api-key",
                                                     "x-api-key": "client", "api-key": "client"})
        assert resp.status == 200
    headers = seen[0]["headers"]
    assert (headers["Authorization"], headers["x-api-key"], headers["api-key"]) == ("Bearer sk-x", "ant-x", "azure-x")


async def test_allowed_hosts() -> None:
    async with running_app(echo_app()) as up:
        async with running_proxy({"routes": [{"upstream": up}, {"path": "/", "host": "app.test", "upstream": up}]}
                                 ) as (proxy, _):
            for host, status in [("evil.example", 403), ("localhost:8080", 200), ("ui.localhost", 200),
                                 ("app.test", 200), ("127.0.0.1", 200), ("[::1]:8080", 200)]:
                resp = await raw_request(proxy, "GET", "/", {"Host": host})
                assert resp.status == status, host
        async with running_proxy({"allowed_hosts": ["*"], "routes": [{"upstream": up}]}) as (proxy, _):
            assert (await raw_request(proxy, "GET", "/", {"Host": "evil.example"})).status == 200
        async with running_proxy({"allowed_hosts": ["proxy.internal"], "routes": [{"upstream": up}]}) as (proxy, _):
            assert (await raw_request(proxy, "GET", "/", {"Host": "proxy.internal:80"})).status == 200
            assert (await raw_request(proxy, "GET", "/", {"Host": "localhost"})).status == 403


async def test_redirects_into_the_upstream_are_rewritten_onto_the_route() -> None:
    async def redirect(request: web.Request) -> web.Response:
        target = request.query["to"].replace("SELF", f"http://{request.host}")
        return web.Response(status=302, headers={"Location": target, "Content-Location": target})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", redirect)
    async with running_app(app) as up, running_proxy({"routes": [{"path": "/api", "upstream": f"{up}/v1"}]}
                                                     ) as (proxy, _):
        cases = {"SELF/v1/next?a=1": "/api/next?a=1", "/v1/login": "/api/login",
                 "https://elsewhere.example/v1/x": "https://elsewhere.example/v1/x", "SELF/outside": None}
        for to, expected in cases.items():
            resp = await raw_request(proxy, "GET", f"/api/r?to={to}", {})
            assert resp.status == 302
            want = expected or to.replace("SELF", up)
            assert resp.headers["location"] == want, to
            assert resp.headers["content-location"] == want


async def test_underscored_header_names_are_dropped_unless_allowed() -> None:
    """On a CGI or WSGI upstream ``X_Api_Key`` and ``X-Api-Key`` both become HTTP_X_API_KEY: an
    underscored twin would get past a ``remove`` rule, so it is dropped (nginx's default)."""
    seen: list[dict[str, Any]] = []
    route = {"upstream": "", "request_headers": {"remove": ["X-Api-Key"], "set": {"X_Injected": "by-config"}}}
    sent = {"X_Api_Key": "client-key", "x_api_KEY": "client-key", "X-Api-Key": "client-key", "X-Plain": "kept"}
    async with running_app(echo_app(seen)) as up:
        async with running_proxy({"routes": [{**route, "upstream": up}]}) as (proxy, _):
            assert (await raw_request(proxy, "GET", "/", sent)).status == 200
            assert (await raw_request(proxy, "GET", "/again", {})).status == 200
        async with running_proxy({"routes": [{**route, "upstream": up}], "underscores_in_headers": True}
                                 ) as (proxy, _):
            assert (await raw_request(proxy, "GET", "/", sent)).status == 200
    dropped, _, allowed = ({k.lower(): v for k, v in s["header_list"]} for s in seen)
    assert "x_api_key" not in dropped and "x-api-key" not in dropped
    assert dropped["x-plain"] == "kept" and dropped["x_injected"] == "by-config"  # the config's own header stays
    assert allowed["x_api_key"] == "client-key" and "x-api-key" not in allowed
