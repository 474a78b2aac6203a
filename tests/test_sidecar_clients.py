"""The LLM sidecar as the README shows it: the real openai SDK, with the README's ``base_url`` and
``api_key``, through a running proxy to a local OpenAI-style upstream that insists on the injected key."""

from __future__ import annotations

import json
import socket

import pytest
from aiohttp import web
from helpers import WAIT, running_app, running_proxy

from sseproxy import demo

openai = pytest.importorskip("openai")  # a test extra; skipped with the reason when it is not installed

KEY = "sk-injected-by-the-proxy"
TOKEN = "proxy-token-for-the-app"


def openai_style_app(seen: list[dict[str, str]]) -> web.Application:
    """``POST /v1/chat/completions`` as OpenAI answers it, only with the injected key."""

    async def completions(request: web.Request) -> web.StreamResponse:
        seen.append({"path": request.path, **request.headers})
        if request.headers.get("Authorization") != f"Bearer {KEY}":
            return web.json_response({"error": {"message": "bad key"}}, status=401)
        assert (await request.json())["stream"] is True
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for token in ("Hello", " from", " upstream"):
            await response.write(demo.chunk(token))
        await response.write(demo.chunk(None, "stop"))
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    return app


async def stream_tokens(client: openai.AsyncOpenAI) -> str:
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}], stream=True)
    out = ""
    async for chunk in stream:
        out += chunk.choices[0].delta.content or ""
    return out


@pytest.mark.parametrize("inbound_auth", [False, True])
async def test_the_openai_sdk_streams_through_the_sidecar_with_the_readme_base_url(inbound_auth: bool) -> None:
    seen: list[dict[str, str]] = []
    async with running_app(openai_style_app(seen)) as up:
        config = {"routes": [{"name": "openai", "path": "/openai", "upstream": f"{up}/v1",
                              "request_headers": {"set": {"Authorization": f"Bearer {KEY}"}}}]}
        if inbound_auth:
            config["inbound_auth"] = {"tokens": [TOKEN]}
        async with running_proxy(config) as (proxy, _):
            # the README's snippet: base_url is the route, api_key a dummy (or, with inbound_auth, the token)
            client = openai.AsyncOpenAI(base_url=f"{proxy}/openai", api_key=TOKEN if inbound_auth else "unused",
                                        max_retries=0, timeout=WAIT)
            async with client:
                assert await stream_tokens(client) == "Hello from upstream"
                if inbound_auth:
                    wrong = openai.AsyncOpenAI(base_url=f"{proxy}/openai", api_key="wrong", max_retries=0,
                                               timeout=WAIT)
                    async with wrong:
                        with pytest.raises(openai.AuthenticationError):
                            await stream_tokens(wrong)
    assert [s["path"] for s in seen] == ["/v1/chat/completions"]  # the wrong token never reached it
    assert TOKEN not in json.dumps(seen)  # the proxy token is removed before forwarding


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this machine")
async def test_a_localhost_upstream_listening_only_on_ipv6_is_reached(monkeypatch: pytest.MonkeyPatch) -> None:
    """Vite on Node 18+ may bind ``localhost`` to ::1 only. config/dev.yaml says ``localhost``, and the
    connector tries every address the name resolves to, 127.0.0.1 first here (refused) then ::1."""
    runner = web.AppRunner(openai_style_app([]), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "::1", 0)
    await site.start()
    port = runner.addresses[0][1]
    real = socket.getaddrinfo

    def both_loopbacks(host: object, *args: object, **kwargs: object) -> object:
        if host == "localhost":  # as /etc/hosts has it on most machines: both, IPv4 first
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
                    (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0))]
        return real(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", both_loopbacks)
    try:
        async with running_proxy({"routes": [{"path": "/openai", "upstream": f"http://localhost:{port}/v1",
                                              "request_headers": {"set": {"Authorization": f"Bearer {KEY}"}}}]}
                                 ) as (proxy, _):
            client = openai.AsyncOpenAI(base_url=f"{proxy}/openai", api_key="unused", max_retries=0, timeout=WAIT)
            async with client:
                assert await stream_tokens(client) == "Hello from upstream"
    finally:
        await runner.cleanup()
