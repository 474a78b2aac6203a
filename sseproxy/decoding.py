"""Incremental gzip/deflate decoding, so an event stream never reaches the client compressed."""

from __future__ import annotations

import zlib
from collections.abc import Iterator

# Bounds how much one upstream read may expand to at once: a decompression bomb is decoded in
# pieces of this size, each written (with backpressure) before the next is produced.
MAX_PIECE = 256 * 1024


class DecodeError(ValueError):
    pass


class Decoder:
    """Decodes one Content-Encoding; ``decode`` yields bounded pieces as input arrives."""

    def __init__(self, encoding: str):
        self.encoding = encoding
        self._gzip = encoding in ("gzip", "x-gzip")
        self._raw_fallback = not self._gzip
        self._obj = self._new()
        self._fed = False

    def _new(self, raw: bool = False) -> zlib._Decompress:
        if self._gzip:
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        return zlib.decompressobj(-zlib.MAX_WBITS if raw else zlib.MAX_WBITS)

    def decode(self, data: bytes) -> Iterator[bytes]:
        self._fed = self._fed or bool(data)
        while data:
            try:
                out = self._obj.decompress(data, MAX_PIECE)
            except zlib.error as e:
                if self._raw_fallback:  # "deflate" is sent raw by some servers, zlib-wrapped by others
                    self._raw_fallback = False
                    self._obj = self._new(raw=True)
                    continue
                raise DecodeError(f"bad {self.encoding} data from upstream: {e}") from None
            self._raw_fallback = False
            if out:
                yield out
            data = self._obj.unconsumed_tail
            if self._obj.eof and self._obj.unused_data:  # concatenated gzip members
                data = self._obj.unused_data
                self._obj = self._new()
                self._raw_fallback = False

    def flush(self) -> bytes:
        if self._fed and not self._obj.eof:
            raise DecodeError(f"{self.encoding} data from upstream ended early")
        return self._obj.flush()


def decoder_for(content_encoding: str | None) -> Decoder | None:
    """A decoder for the encoding, or ``None`` for identity or a coding the proxy cannot decode."""
    encoding = (content_encoding or "").strip().lower()
    if encoding in ("gzip", "x-gzip", "deflate"):
        return Decoder(encoding)
    return None
