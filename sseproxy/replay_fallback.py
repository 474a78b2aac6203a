"""``replay --fallback URL``: a request no recording matches goes to a real upstream, streamed back
piece by piece as it arrives, and with ``--record DIR2`` recorded like any proxied exchange.

A small pass-through, not the proxy's relay: no routes, header rules or heartbeats, only what a
mock upstream filling its gaps needs. The upstream's body is decoded (gzip, deflate) so that what
is recorded is what a client reads; Content-Encoding and a Content-Length it no longer fits are
dropped.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from .errors import Outcome, UpstreamUnavailable
from .framing import StreamKind, stream_kind
from .headers import decodable_accept_encoding, without_hop_by_hop
from .hooks import ExchangeInfo, Hook
from .recorder import ended_ok

if TYPE_CHECKING:
    from .accesslog import RequestRecord
    from .recorder import Recorder

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 300.0  # the longest silence accepted from the fallback mid-response


def set_outcome(record: RequestRecord, outcome: Outcome) -> None:
    record.outcome = outcome


class Fallback:
    def __init__(self, base: str, recorder: Recorder | None = None):
        self.base = base.rstrip("/")
        self.recorder = recorder
        self._session: aiohttp.ClientSession | None = None
        self._ids = itertools.count(1)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self.recorder is not None:
            await self.recorder.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT)
            self._session = aiohttp.ClientSession(timeout=timeout, auto_decompress=True)
        return self._session

    async def forward(self, request: web.BaseRequest, body: bytes, record: RequestRecord) -> web.StreamResponse:
        """Send the request to the fallback and stream its response back; record it when asked."""
        hook: Hook | None = None
        if self.recorder is not None:
            path, _, query = request.raw_path.partition("?")
            hook = self.recorder.open(ExchangeInfo(
                id=next(self._ids), route="fallback", method=request.method, path=path, query=query,
                client=request.remote, headers=request.headers, started=record.started))
            if body:
                hook.request_body(body)
        try:
            return await self._forward(request, body, record, hook)
        except asyncio.CancelledError:
            set_outcome(record, Outcome.CLIENT_CLOSED)
            raise
        finally:
            if hook is not None:
                hook.end(record)

    async def _forward(self, request: web.BaseRequest, body: bytes, record: RequestRecord,
                       hook: Hook | None) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        headers = without_hop_by_hop(request.headers)
        for name in ("Host", "Content-Length", "Expect"):
            headers.popall(name, None)
        headers["Accept-Encoding"] = decodable_accept_encoding(request.headers.get("Accept-Encoding", "identity"))
        url = URL(self.base + request.raw_path, encoded=True)
        try:
            upstream = await self._client().request(request.method, url, headers=headers, data=body or None,
                                                    allow_redirects=False)
        except (aiohttp.ClientError, TimeoutError) as e:
            raise UpstreamUnavailable(f"fallback {self.base}: {e or type(e).__name__}") from None
        try:
            record.ttfb = loop.time() - record.started
            record.status = upstream.status
            kind = stream_kind(upstream.headers.get("Content-Type"), "auto")
            out = without_hop_by_hop(upstream.headers)
            decoded = upstream.headers.get("Content-Encoding", "identity").lower() != "identity"
            if decoded or kind is not StreamKind.NONE:
                out.popall("Content-Encoding", None)
                out.popall("Content-Length", None)
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=out)
            if hook is not None:
                hook.response(upstream.status, CIMultiDict(out), kind)
            await response.prepare(request)
            if not await self._pump(upstream, response, record, hook):
                if request.transport is not None:
                    request.transport.close()  # a truncated close: the client knows it is incomplete
                return response
            await response.write_eof()
            return response
        finally:
            if ended_ok(record.outcome):
                upstream.release()
            else:
                upstream.close()

    @staticmethod
    async def _pump(upstream: aiohttp.ClientResponse, response: web.StreamResponse, record: RequestRecord,
                    hook: Hook | None) -> bool:
        """Relay the body piece by piece; False when either side failed (the outcome says which)."""
        loop = asyncio.get_running_loop()
        try:
            async for piece in upstream.content.iter_any():
                try:
                    await response.write(piece)
                except ConnectionError:
                    set_outcome(record, Outcome.CLIENT_CLOSED)
                    return False
                record.bytes += len(piece)
                if hook is not None:
                    hook.data(piece, loop.time(), 0)  # the recorder's: it frames what it records itself
        except (aiohttp.ClientError, TimeoutError) as e:
            set_outcome(record, Outcome.UPSTREAM_ERROR)
            record.error, record.error_type = f"fallback failed mid-response: {e or type(e).__name__}", "upstream_error"
            return False
        return True
