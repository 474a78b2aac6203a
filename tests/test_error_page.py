"""A browser navigation that gets a 502 or 504 reads a page; API clients keep the JSON body."""

from __future__ import annotations

import asyncio
import json

import pytest
from helpers import free_port, raw_request, raw_server, running_proxy

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


@pytest.mark.parametrize("accept", [BROWSER, "*/*", "application/json", "text/event-stream"])
async def test_a_dead_upstream_is_a_page_for_a_browser_and_json_for_an_api_client(accept: str) -> None:
    port = free_port()
    async with running_proxy({"routes": [{"name": "api", "path": "/api", "upstream": "http://127.0.0.1:1"},
                                         {"name": "frontend", "upstream": f"http://127.0.0.1:{port}"}]}
                             ) as (proxy, _):
        resp = await raw_request(proxy, "GET", "/", {"Accept": accept, "X-Request-Id": "nav-1"})
        body = (await resp.body()).decode()
    assert resp.status == 502 and resp.headers["x-request-id"] == "nav-1"
    if accept != BROWSER:
        assert resp.headers["content-type"].startswith("application/json")
        assert json.loads(body)["error"]["type"] == "upstream_unavailable"
        return
    assert resp.headers["content-type"].startswith("text/html")
    assert "<code>frontend</code>" in body                                 # the route
    assert f"<code>http://127.0.0.1:{port}</code>" in body                   # the upstream tried
    assert f"cannot connect to http://127.0.0.1:{port}" in body              # what failed
    assert f"running, on port {port}?" in body and "routes[1].upstream" in body  # the hint
    assert "nav-1" in body


async def test_an_upstream_that_never_answers_is_a_504_page_for_a_browser() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # reads the request and never answers

    async with raw_server(silent) as up, running_proxy(
            {"routes": [{"name": "slow", "upstream": up, "timeouts": {"idle": "200ms"}}]}) as (proxy, _):
        resp = await raw_request(proxy, "GET", "/", {"Accept": BROWSER})
        body = (await resp.body()).decode()
    assert resp.status == 504 and resp.headers["content-type"].startswith("text/html")
    assert "did not answer in time" in body and "timeouts.idle" in body and "<code>slow</code>" in body
