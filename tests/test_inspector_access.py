"""Who may look at the inspector: loopback clients that came straight to the proxy, or, with
``inbound_auth``, requests with a valid token (header or ``?token=``); everyone else gets 403.

The non-loopback case uses a real second address: the proxy listens on 0.0.0.0 and a client
connects to this machine's own non-loopback address, so the proxy sees that address as the peer
(127.0.0.2 would not do: all of 127/8 is loopback). Where the machine has no such address, the
decision function is still tested directly, below."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from helpers import raw_request, running_proxy
from multidict import CIMultiDict, MultiDict

from sseproxy.accesslog import AccessLog
from sseproxy.config import Config
from sseproxy.inspector_http import may_inspect
from sseproxy.runtime import AuthPolicy, Runtime, compile_config
from sseproxy.server import Listener

PATHS = ("/_sseproxy/", "/_sseproxy/streams", "/_sseproxy/streams/events")
TOKEN = "tok-inspector-0123456789"


def own_address() -> str | None:
    """This machine's address on its default route, or its host name's, if either is not loopback
    (connecting a UDP socket sends no packet: it only picks the route and source address)."""
    candidates = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, contextlib.suppress(OSError):
        s.connect(("198.51.100.1", 9))  # TEST-NET-2: never a real host
        candidates.append(str(s.getsockname()[0]))
    with contextlib.suppress(OSError):
        candidates.append(socket.gethostbyname(socket.gethostname()))
    return next((a for a in candidates if not a.startswith("127.") and a != "0.0.0.0"), None)


@contextlib.asynccontextmanager
async def proxy_on_all_addresses(config: dict[str, Any]) -> AsyncIterator[int]:
    settings = {"listen": "0.0.0.0:0", "shutdown_grace": 0.5, "routes": [{"upstream": "http://127.0.0.1:9"}],
                **config}
    listener = Listener(Runtime(compile_config(Config.model_validate(settings))), AccessLog())
    _, port = await listener.start("0.0.0.0", 0)
    try:
        yield port
    finally:
        await listener.stop()


async def status_of(base: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    response = await raw_request(base, "GET", path, headers)
    if response.status == 200:
        response.close()  # the feed does not end by itself
        return 200, {}
    return response.status, json.loads(await response.body())


async def test_a_client_from_another_address_gets_403_and_loopback_gets_in() -> None:
    address = own_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to connect from: see test_the_decision below")
    async with proxy_on_all_addresses({}) as port:
        for path in PATHS:
            # a local Host name, so only the peer's address can be why it is refused
            status, body = await status_of(f"http://{address}:{port}", path, {"Host": f"localhost:{port}"})
            assert status == 403, path
            assert body["error"]["type"] == "forbidden"
            assert await status_of(f"http://127.0.0.1:{port}", path) == (200, {})
        # health is not the inspector: it answers the other address too
        health = await raw_request(f"http://{address}:{port}", "GET", "/_sseproxy/health")
        assert health.status == 200


async def test_a_request_forwarded_by_another_proxy_is_refused_even_from_loopback() -> None:
    async with running_proxy({"routes": [{"upstream": "http://127.0.0.1:9"}]}) as (proxy, _):
        for header in ("X-Forwarded-For", "Forwarded", "X-Real-IP"):
            status, body = await status_of(proxy, "/_sseproxy/streams", {header: "127.0.0.1"})
            assert status == 403 and body["error"]["type"] == "forbidden", header


async def test_with_inbound_auth_a_token_is_needed() -> None:
    config = {"inbound_auth": {"tokens": [TOKEN]}, "routes": [{"upstream": "http://127.0.0.1:9"}]}
    async with running_proxy(config) as (proxy, _):
        for path in PATHS:
            assert (await status_of(proxy, path))[0] == 403, path
            assert (await status_of(proxy, path, {"Authorization": "Bearer wrong-token-000000"}))[0] == 403
            assert (await status_of(proxy, path + "?token=wrong"))[0] == 403
            assert (await status_of(proxy, path, {"Authorization": f"Bearer {TOKEN}"}))[0] == 200, path
            assert (await status_of(proxy, f"{path}?token={TOKEN}"))[0] == 200, path
        # the page's files hold no data: the page can load them without a token in their address
        assert (await status_of(proxy, "/_sseproxy/inspector.js"))[0] == 200


async def test_a_foreign_host_name_is_refused_even_from_loopback() -> None:
    """DNS rebinding: with allowed_hosts "*", a page whose name now points at 127.0.0.1 reaches the
    proxy from the local browser; health answers it, the inspector does not."""
    config = {"allowed_hosts": ["*"], "routes": [{"upstream": "http://127.0.0.1:9"}]}
    async with running_proxy(config) as (proxy, _):
        status, body = await status_of(proxy, "/_sseproxy/streams", {"Host": "rebound.example"})
        assert status == 403 and body["error"]["type"] == "forbidden"
        assert (await status_of(proxy, "/_sseproxy/health", {"Host": "rebound.example"}))[0] == 200
        for host in ("localhost:8080", "app.localhost", "127.0.0.1", "[::1]:80"):
            assert (await status_of(proxy, "/_sseproxy/streams", {"Host": host}))[0] == 200, host


def test_the_decision() -> None:
    none: MultiDict[str] = MultiDict()
    plain: CIMultiDict[str] = CIMultiDict({"Host": "localhost"})
    for client in ("127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"):
        assert may_inspect(None, client, plain, none), client
    for client in ("10.0.0.5", "192.0.2.2", "::ffff:10.0.0.5", "2001:db8::1", None, "", "unix"):
        assert not may_inspect(None, client, plain, none), client
    assert not may_inspect(None, "127.0.0.1", CIMultiDict({"Host": "localhost", "x-forwarded-for": "1.2.3.4"}), none)
    assert not may_inspect(None, "127.0.0.1", CIMultiDict({"Host": "example.com"}), none, frozenset({"*"}))
    assert may_inspect(None, "127.0.0.1", CIMultiDict({"Host": "dev.test"}), none, frozenset({"dev.test"}))
    auth = AuthPolicy("X-Token", (TOKEN.encode(),))
    assert not may_inspect(auth, "127.0.0.1", plain, none)  # with inbound_auth, loopback needs the token too
    assert may_inspect(auth, "10.0.0.5", CIMultiDict({"X-Token": TOKEN}), none)
    assert may_inspect(auth, "10.0.0.5", plain, MultiDict({"token": TOKEN}))
    assert not may_inspect(auth, "10.0.0.5", plain, MultiDict({"token": TOKEN + "x"}))
