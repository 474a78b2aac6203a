"""Incremental decoding of gzip, deflate, br and zstd, so an event stream never reaches the client compressed.

This is the one place that knows which codings the proxy can decode: ``DECODABLE`` is what
``headers`` lets through to a non-local upstream, and ``decoder_for`` is what the relay uses.

Every decoder yields bounded pieces as input arrives: a decompression bomb is decoded in pieces of
at most ``MAX_PIECE`` bytes, each written (with backpressure) before the next one is produced, so
a few compressed bytes can never become gigabytes in memory at once. Truncated or corrupt input
raises ``DecodeError``.
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Iterator
from typing import Any

# Untyped here (brotli-stubs lags 1.2, which added output_buffer_limit), so typed at its one use below.
import brotli  # type: ignore[import-untyped, unused-ignore]

if sys.version_info >= (3, 14):
    from compression import zstd
else:  # the standard library's module, backported; zstandard has no bound on one call's output
    from backports import zstd

# Bounds how much one upstream read may expand to at once (see the module docstring).
MAX_PIECE = 256 * 1024
# brotli's output buffer stops growing once it reaches its limit, so a piece can overshoot it by
# one growth step (measured: 229,328 bytes for a limit of 128 KiB); half of MAX_PIECE keeps pieces under it.
_BROTLI_LIMIT = MAX_PIECE // 2
# Bounds the window a zstd frame may demand, so one stream cannot make the decoder allocate up to
# 2 GiB: 8 MiB (2**23), the limit RFC 9659 sets for the zstd content coding on the web.
_ZSTD_WINDOW_LOG_MAX = 23

GZIP = frozenset({"gzip", "x-gzip"})


class DecodeError(ValueError):
    pass


class Decoder:
    """Decodes one Content-Encoding; ``decode`` yields bounded pieces as input arrives, ``flush``
    returns what is left at the end and raises ``DecodeError`` when the input ended early."""

    def __init__(self, encoding: str):
        self.encoding = encoding
        self._fed = False

    def decode(self, data: bytes) -> Iterator[bytes]:
        raise NotImplementedError

    def flush(self) -> bytes:
        raise NotImplementedError

    def _error(self, problem: str) -> DecodeError:
        return DecodeError(f"bad {self.encoding} data from upstream: {problem}")

    def _ended_early(self) -> DecodeError:
        return DecodeError(f"{self.encoding} data from upstream ended early")


class ZlibDecoder(Decoder):
    """gzip (members may be concatenated) and deflate (zlib-wrapped, or raw as some servers send it)."""

    def __init__(self, encoding: str):
        super().__init__(encoding)
        self._gzip = encoding in GZIP
        # deflate: zlib-wrapped or raw is told by the first two bytes, which may come in two reads
        self._sniff: bytearray | None = None if self._gzip else bytearray()
        self._obj = self._new()

    def _new(self, raw: bool = False) -> zlib._Decompress:
        if self._gzip:
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        return zlib.decompressobj(-zlib.MAX_WBITS if raw else zlib.MAX_WBITS)

    def decode(self, data: bytes) -> Iterator[bytes]:
        self._fed = self._fed or bool(data)
        if self._sniff is not None:
            self._sniff += data
            if len(self._sniff) < 2:
                return
            data, self._sniff = bytes(self._sniff), None
            cmf, flg = data[0], data[1]
            wrapped = cmf & 0x0F == 8 and (cmf << 8 | flg) % 31 == 0  # RFC 1950's header check
            self._obj = self._new(raw=not wrapped)
        while data:
            try:
                out = self._obj.decompress(data, MAX_PIECE)
            except zlib.error as e:
                raise self._error(str(e)) from None
            if out:
                yield out
            data = self._obj.unconsumed_tail
            if self._obj.eof and self._obj.unused_data:  # concatenated gzip members
                data = self._obj.unused_data
                self._obj = self._new()

    def flush(self) -> bytes:
        if self._fed and not self._obj.eof:
            raise self._ended_early()
        return self._obj.flush()


class BrotliDecoder(Decoder):
    def __init__(self, encoding: str):
        super().__init__(encoding)
        self._obj: Any = brotli.Decompressor()

    def _process(self, data: bytes) -> bytes:
        try:
            out: bytes = self._obj.process(data, output_buffer_limit=_BROTLI_LIMIT)
        except brotli.error as e:
            raise self._error(str(e)) from None
        return out

    def decode(self, data: bytes) -> Iterator[bytes]:
        if not data:
            return
        self._fed = True
        out = self._process(data)
        # The input is taken whole; output held back by the limit comes with the next calls, which
        # must carry no input. An empty piece means it is drained (even when the limit was not hit,
        # can_accept_more_data() alone does not say so).
        while out:
            yield out
            out = self._process(b"")

    def flush(self) -> bytes:
        if self._fed and not self._obj.is_finished():
            raise self._ended_early()
        return b""


class ZstdDecoder(Decoder):
    """zstd, frames possibly concatenated (skippable frames too), each decoded with a bounded window."""

    def __init__(self, encoding: str):
        super().__init__(encoding)
        self._obj = self._new()
        self._mid_frame = False  # bytes of a frame were fed and its end is not reached yet

    @staticmethod
    def _new() -> zstd.ZstdDecompressor:
        return zstd.ZstdDecompressor(options={zstd.DecompressionParameter.window_log_max: _ZSTD_WINDOW_LOG_MAX})

    def decode(self, data: bytes) -> Iterator[bytes]:
        self._fed = self._fed or bool(data)
        while data or not self._obj.needs_input:
            self._mid_frame = True
            try:
                out = self._obj.decompress(data, MAX_PIECE)
            except zstd.ZstdError as e:
                raise self._error(str(e)) from None
            data = b""
            if out:
                yield out
            if self._obj.eof:
                self._mid_frame = False
                data = self._obj.unused_data  # the next frame, if any
                self._obj = self._new()

    def flush(self) -> bytes:
        if self._mid_frame:
            raise self._ended_early()
        return b""


_DECODERS: dict[str, type[Decoder]] = {
    "gzip": ZlibDecoder, "x-gzip": ZlibDecoder, "deflate": ZlibDecoder, "br": BrotliDecoder, "zstd": ZstdDecoder,
}
# The codings the proxy can decode mid-stream: what may be asked of an upstream (see headers).
DECODABLE = frozenset({*_DECODERS, "identity"})


def decoder_for(content_encoding: str | None) -> Decoder | None:
    """A decoder for the encoding, or ``None`` for identity or a coding the proxy cannot decode."""
    encoding = (content_encoding or "").strip().lower()
    cls = _DECODERS.get(encoding)
    return None if cls is None else cls(encoding)
