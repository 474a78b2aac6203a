"""Content codings through a running proxy: gzip and deflate decoded event by event, a corrupt or
truncated gzip stream ended as an upstream error, an undecodable coding relayed raw, ``stream:
never`` left untouched, and the Accept-Encoding the proxy asks a non-local upstream for.

The upstreams are raw sockets, so each test controls exactly which compressed bytes go out when;
gates (not sleeps) prove that each event reaches the client before the upstream sends the next.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import socket
import zlib

import aiohttp.connector
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from helpers import WAIT, RawResponse, Truncated, raw_request, raw_server, read_head, running_app, running_proxy
from upstreams import chunk, echo_app, raw_proxy

from sseproxy.config import Config
from sseproxy.runtime import compile_config

ONE, TWO, THREE = b"id: 1\ndata: one\n\n", b"id: 2\ndata: two\n\n", b"id: 3\ndata: three\n\n"


def head(content_type: str, coding: str, extra: str = "Transfer-Encoding: chunked\r\n") -> bytes:
    return (f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Encoding: {coding}\r\n{extra}\r\n"
            ).encode()


def flushed(compressor: zlib._Compress, data: bytes) -> bytes:
    """``data`` compressed and flushed, so the decoder can give all of it back at once."""
    return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)


async def access_line(caplog: pytest.LogCaptureFixture) -> str:
    """The request's access-log line (it is written when the handler ends, which may be just after
    the client saw the connection close)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not (lines := [r.getMessage() for r in caplog.records if r.name == "sseproxy.access"]):
        assert loop.time() < deadline, "no access-log line"
        await asyncio.sleep(0.01)
    assert len(lines) == 1, lines
    return lines[0]


async def expect_upstream_error_then_truncation(resp: RawResponse) -> None:
    frame = await resp.next_chunk()
    assert frame is not None and frame.startswith(b"event: error\ndata: ") and frame.endswith(b"\n\n"), frame
    assert json.loads(frame.split(b"data: ", 1)[1])["error"]["type"] == "upstream_error"
    with pytest.raises(Truncated):  # closed without the final chunk: never mistaken for a complete answer
        await resp.next_chunk()


@pytest.mark.parametrize("ending", [
    pytest.param(chunk(b"\xff" * 64), id="corrupt"),   # BFINAL=1, BTYPE=11: an invalid deflate block
    pytest.param(b"0\r\n\r\n", id="truncated"),        # the chunked body ends cleanly, the gzip member does not
])
async def test_a_gzip_stream_that_breaks_mid_stream_is_an_upstream_error(ending: bytes,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    delivered = asyncio.Event()

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        compressor = zlib.compressobj(wbits=31)
        writer.write(head("text/event-stream", "gzip") + chunk(flushed(compressor, ONE + TWO)))
        await writer.drain()
        await asyncio.wait_for(delivered.wait(), WAIT)
        writer.write(ending)
        await writer.drain()
        await asyncio.wait_for(reader.read(), WAIT)  # held open until the proxy closes it

    with caplog.at_level(logging.INFO, logger="sseproxy.access"):
        async with raw_proxy(upstream) as proxy:
            resp = await raw_request(proxy, "GET", "/events", {"Accept": "text/event-stream"})
            assert resp.status == 200 and "content-encoding" not in resp.headers
            assert await resp.next_chunk() == ONE + TWO  # decoded: the events before the break arrive
            delivered.set()
            await expect_upstream_error_then_truncation(resp)
            line = await access_line(caplog)
    assert "outcome=upstream_error" in line and "events=2" in line, line


@pytest.mark.parametrize("coding,wbits", [
    pytest.param("deflate", zlib.MAX_WBITS, id="deflate-zlib-wrapped"),
    pytest.param("deflate", -zlib.MAX_WBITS, id="deflate-raw"),
    pytest.param("gzip", 16 + zlib.MAX_WBITS, id="gzip"),
])
async def test_a_compressed_event_stream_is_decoded_event_by_event(coding: str, wbits: int,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    gates = [asyncio.Event(), asyncio.Event()]

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        compressor = zlib.compressobj(wbits=wbits)
        writer.write(head("text/event-stream", coding) + chunk(flushed(compressor, ONE)))
        await writer.drain()
        await asyncio.wait_for(gates[0].wait(), WAIT)  # event 2 only once event 1 reached the client
        half = len(TWO) // 2  # event 2 in two compressed pieces: the proxy must put it back together
        writer.write(chunk(flushed(compressor, TWO[:half])))
        await writer.drain()
        writer.write(chunk(flushed(compressor, TWO[half:])))
        await writer.drain()
        await asyncio.wait_for(gates[1].wait(), WAIT)
        writer.write(chunk(compressor.compress(THREE) + compressor.flush()) + b"0\r\n\r\n")
        await writer.drain()
        await asyncio.wait_for(reader.read(), WAIT)

    with caplog.at_level(logging.INFO, logger="sseproxy.access"):
        async with raw_proxy(upstream) as proxy:
            resp = await raw_request(proxy, "GET", "/events", {"Accept": "text/event-stream"})
            assert resp.status == 200
            assert "content-encoding" not in resp.headers and "content-length" not in resp.headers
            assert resp.headers["x-accel-buffering"] == "no"
            assert await resp.next_chunk() == ONE
            gates[0].set()
            assert await resp.next_chunk() == TWO  # one whole event, one write
            gates[1].set()
            assert await resp.next_chunk() == THREE
            assert await resp.next_chunk() is None  # a clean end
            line = await access_line(caplog)
    assert "outcome=ok" in line and "events=3" in line, line


async def test_an_undecodable_coding_is_relayed_as_it_comes_with_its_coding_kept() -> None:
    """``compress`` (LZW) cannot be decoded: the bytes pass as they come, never reframed (the
    framer would hold back these pieces, which end no event) and never labelled identity."""
    delivered = asyncio.Event()
    pieces = (b"\x1f\x9d\x90first piece, no event end", b"second piece")

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(head("text/event-stream", "compress") + chunk(pieces[0]))
        await writer.drain()
        await asyncio.wait_for(delivered.wait(), WAIT)
        writer.write(chunk(pieces[1]) + b"0\r\n\r\n")
        await writer.drain()
        await asyncio.wait_for(reader.read(), WAIT)

    async with raw_proxy(upstream) as proxy:
        resp = await raw_request(proxy, "GET", "/events", {})
        assert resp.status == 200
        assert resp.headers["content-encoding"] == "compress"
        assert resp.headers["x-accel-buffering"] == "no"  # still streamed
        assert await resp.next_chunk() == pieces[0]
        delivered.set()
        assert await resp.next_chunk() == pieces[1]
        assert await resp.next_chunk() is None


async def test_stream_never_passes_length_and_coding_untouched() -> None:
    body = gzip.compress(ONE + TWO)

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(head("text/event-stream", "gzip", f"Content-Length: {len(body)}\r\nCache-Control: max-age=60\r\n")
                     + body)
        await writer.drain()
        await asyncio.wait_for(reader.read(), WAIT)

    config = {"routes": [{"upstream": "", "stream": "never"}]}
    async with raw_server(upstream) as url:
        config["routes"][0]["upstream"] = url
        async with running_proxy(config) as (proxy, _):
            resp = await raw_request(proxy, "GET", "/events", {"Accept": "text/event-stream"})
            assert resp.status == 200
            assert resp.headers["content-length"] == str(len(body))
            assert resp.headers["content-encoding"] == "gzip"
            assert "x-accel-buffering" not in resp.headers
            assert resp.headers["cache-control"] == "max-age=60"  # no no-cache/no-transform added
            assert "transfer-encoding" not in resp.headers
            assert await resp.body() == body  # byte for byte, still compressed


# -- Accept-Encoding toward a non-local upstream -----------------------------------------------
# ``http://127.1:PORT`` would be the natural non-local name for a loopback socket, but aiohttp 3.14
# refuses non-canonical IPv4 forms (InvalidUrlClientError), so every request to it is a 502. A name
# under the reserved ``.test`` domain, answered by a resolver that never asks DNS, is used instead.

FAR = "upstream.test"


class LoopbackResolver(AbstractResolver):
    """Resolves ``FAR`` to 127.0.0.1 without DNS and refuses every other name, so no test traffic
    can leave the machine."""

    def __init__(self, *args: object, **kwargs: object):
        pass

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        if host != FAR:
            raise OSError(f"{host!r} does not resolve in this test")
        return [{"hostname": host, "host": "127.0.0.1", "port": port, "family": socket.AF_INET, "proto": 0,
                 "flags": 0}]

    async def close(self) -> None:
        pass


def test_the_far_name_is_not_a_local_upstream() -> None:
    config = compile_config(Config.model_validate({"listen": "127.0.0.1:0", "routes": [
        {"path": "/far", "upstream": f"http://{FAR}:9"},
        {"path": "/near", "upstream": "http://127.0.0.1:9"},
    ]}))
    assert {route.prefix: route.local_upstream for route in config.routes} == {"/far": False, "/near": True}


CLIENT_AE = "gzip, br, zstd, compress;q=0.5"


@pytest.mark.parametrize("mode,far,accept,expected", [
    ("auto", True, "application/json", "gzip, br, zstd"),     # narrowed to what the proxy decodes
    ("auto", True, "text/event-stream", "identity"),          # a stream: never compressed upstream
    ("pass", True, "text/event-stream", CLIENT_AE),           # untouched
    ("pass", True, "application/json", CLIENT_AE),
    ("identity", True, "application/json", "identity"),
    ("auto", False, "application/json", "identity"),          # control: the same upstream named locally
])
async def test_accept_encoding_toward_the_upstream(mode: str, far: bool, accept: str, expected: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aiohttp.connector, "DefaultResolver", LoopbackResolver)  # the proxy's pools use it
    seen: list[dict[str, object]] = []
    async with running_app(echo_app(seen)) as url:
        upstream = url.replace("://127.0.0.1:", f"://{FAR}:") if far else url
        route = {"upstream": upstream, "upstream_compression": mode}
        async with running_proxy({"routes": [route]}) as (proxy, runtime):
            assert runtime.snapshot.routes[0].local_upstream is not far
            resp = await raw_request(proxy, "GET", "/x", {"Accept": accept, "Accept-Encoding": CLIENT_AE})
            assert resp.status == 200, await resp.body()
            await resp.body()
    assert len(seen) == 1
    headers = seen[0]["headers"]
    assert isinstance(headers, dict)
    assert headers["Accept-Encoding"] == expected
    assert headers["Host"].startswith(f"{FAR}:" if far else "127.0.0.1:")  # it went out under that name
