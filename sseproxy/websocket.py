"""The WebSocket relay: the upstream handshake first (so its negotiated subprotocol can be passed
back), then two pumps in a ``TaskGroup``; text, binary, ping, pong and close codes pass both ways,
and when either side closes or fails, so does the other."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp
from aiohttp import WSMsgType, web
from yarl import URL

from .errors import UpstreamUnavailable
from .headers import Headers
from .upstream import OutboundRequest, Pools, UpstreamTarget, with_failover

log = logging.getLogger("sseproxy")

GOING_AWAY = 1001
UPSTREAM_FAILED = 1011
MAX_MESSAGE = 64 * 1024 * 1024  # bounds one relayed message; HMR and token streams are far smaller
# Headers the WebSocket client makes itself for the upstream handshake.
HANDSHAKE_HEADERS = ("Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Protocol",
                     "Sec-WebSocket-Extensions")


def is_upgrade(headers: Headers) -> bool:
    return headers.get("Upgrade", "").lower() == "websocket"


def subprotocols(headers: Headers) -> list[str]:
    return [p.strip() for v in headers.getall("Sec-WebSocket-Protocol", ()) for p in v.split(",") if p.strip()]


async def connect(pools: Pools, target: UpstreamTarget, out: OutboundRequest, *,
                  protocols: list[str]) -> aiohttp.ClientWebSocketResponse:
    """The upstream WebSocket, trying the next upstream while connecting fails."""
    headers = out.headers
    for name in HANDSHAKE_HEADERS:
        headers.popall(name, None)

    async def attempt(base: URL, url: URL) -> aiohttp.ClientWebSocketResponse:
        try:
            return await pools.session(base).ws_connect(
                url, protocols=protocols, headers=headers, autoping=False, autoclose=False,
                max_msg_size=MAX_MESSAGE, timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0))
        except aiohttp.WSServerHandshakeError as e:
            raise UpstreamUnavailable(f"upstream refused the WebSocket handshake with {e.status}") from None

    return await with_failover(target, out.path, out.query, attempt)


WebSocket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


async def _pump(source: WebSocket, sink: WebSocket, failed_code: int, failed_reason: str) -> None:
    """Forward every message from ``source`` to ``sink``; mirror the close, or close on failure."""
    while True:
        msg = await source.receive()
        if msg.type is WSMsgType.TEXT:
            await sink.send_str(msg.data)
        elif msg.type is WSMsgType.BINARY:
            await sink.send_bytes(msg.data)
        elif msg.type is WSMsgType.PING:
            await sink.ping(msg.data)
        elif msg.type is WSMsgType.PONG:
            await sink.pong(msg.data)
        elif msg.type is WSMsgType.CLOSE:
            code, reason = msg.data or 1000, (msg.extra or "").encode()
            await sink.close(code=code, message=reason)  # first: the source may hang up once answered
            await source.close(code=code, message=reason)  # answer the close handshake
            return
        else:  # CLOSING (the other pump is closing this side), CLOSED or ERROR (connection lost)
            if msg.type is not WSMsgType.CLOSING:
                await sink.close(code=failed_code, message=failed_reason.encode())
            return


async def relay(request: web.BaseRequest, upstream: aiohttp.ClientWebSocketResponse) -> web.WebSocketResponse:
    """Accept the client's upgrade with the upstream's subprotocol, then pump until either side ends."""
    client = web.WebSocketResponse(protocols=[upstream.protocol] if upstream.protocol else (),
                                   autoping=False, autoclose=False, max_msg_size=MAX_MESSAGE)
    try:
        await client.prepare(request)
        async with asyncio.TaskGroup() as pumps:
            pumps.create_task(_pump(client, upstream, GOING_AWAY, "client went away"))
            pumps.create_task(_pump(upstream, client, UPSTREAM_FAILED, "upstream connection lost"))
    except* (ConnectionError, aiohttp.ClientError) as group:
        log.debug("websocket relay ended: %r", group.exceptions)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(upstream.close(), 1.0)
    return client
