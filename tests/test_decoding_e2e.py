"""br and zstd streams through a running proxy: decoded as they arrive and relayed in whole frames,
proven with gates (the upstream's next event is held until the client has the previous one)."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import AsyncIterator

import brotli  # type: ignore[import-untyped, unused-ignore]
import pytest
from aiohttp import web
from helpers import Gate, Truncated, raw_request, running_app, running_proxy
from upstreams import CONTENT_TYPES, ENDINGS, frames_for

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

CORRUPT = b"CORRUPT"  # released through the gate: the upstream sends bytes no decoder accepts


class Encoder:
    """Compresses a stream piece by piece, flushing after each so every piece is decodable at once."""

    def __init__(self, coding: str):
        self.coding = coding
        self._br = brotli.Compressor() if coding == "br" else None
        self._zstd = zstd.ZstdCompressor() if coding == "zstd" else None

    def piece(self, data: bytes) -> bytes:
        if self._br is not None:
            return bytes(self._br.process(data) + self._br.flush())
        assert self._zstd is not None
        return self._zstd.compress(data, zstd.ZstdCompressor.FLUSH_BLOCK)

    def end(self) -> bytes:
        return bytes(self._br.finish()) if self._br is not None else self._zstd.flush()  # type: ignore[union-attr]


def encoded_stream_app(gate: Gate, content_type: str, coding: str) -> web.Application:
    """Sends each piece the test releases, compressed and flushed, until it releases None."""

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": content_type, "Content-Encoding": coding})
        await response.prepare(request)
        encoder = Encoder(coding)
        while (data := await gate.next()) is not None:
            await response.write(b"\xff" * 8 if data == CORRUPT else encoder.piece(data))
        await response.write(encoder.end())
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/{tail:.*}", stream)
    return app


@contextlib.asynccontextmanager
async def encoded_proxy(content_type: str, coding: str) -> AsyncIterator[tuple[Gate, str]]:
    gate = Gate()
    async with running_app(encoded_stream_app(gate, content_type, coding)) as upstream, \
            running_proxy({"routes": [{"upstream": upstream}]}) as (proxy, _):
        yield gate, proxy


@pytest.mark.parametrize("ending", list(ENDINGS))
@pytest.mark.parametrize("coding", ["br", "zstd"])
@pytest.mark.parametrize("kind", list(CONTENT_TYPES))
async def test_each_frame_arrives_decoded_and_whole_before_the_next_is_sent(kind: str, coding: str,
                                                                           ending: str) -> None:
    async with encoded_proxy(CONTENT_TYPES[kind], coding) as (gate, proxy):
        resp = await raw_request(proxy, "GET", "/stream", {"Accept-Encoding": "br, zstd"})
        assert resp.status == 200
        assert "content-encoding" not in resp.headers  # decoded as it arrived, never compressed to the client
        assert "content-length" not in resp.headers
        for frame in frames_for(kind, ending):
            gate.release(frame[:7])  # half a frame, compressed and flushed: the proxy must hold it ...
            gate.release(frame[7:])  # ... until its end arrives, then write it whole
            assert await resp.next_chunk() == frame
        gate.release(None)
        assert await resp.next_chunk() is None  # the stream's end decoded cleanly, so the client's ends cleanly
        resp.close()


@pytest.mark.parametrize("coding", ["br", "zstd"])
async def test_a_corrupt_stream_ends_in_the_error_event_and_a_truncated_transfer(coding: str) -> None:
    async with encoded_proxy("text/event-stream", coding) as (gate, proxy):
        resp = await raw_request(proxy, "GET", "/", {})
        gate.release(b"data: one\n\n")
        assert await resp.next_chunk() == b"data: one\n\n"
        gate.release(CORRUPT)
        frame = await resp.next_chunk()
        assert frame is not None and frame.startswith(b"event: error\ndata: ")
        error = json.loads(frame.split(b"data: ", 1)[1])
        assert error["error"]["type"] == "upstream_error"
        assert f"bad {coding} data" in error["error"]["message"]
        with pytest.raises(Truncated):  # never a clean end after a broken stream
            await resp.next_chunk()
        gate.release(None)
