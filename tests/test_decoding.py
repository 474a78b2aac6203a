"""The decoders, sans io: every coding round-trips whatever way its bytes are split, a bomb comes
out in bounded pieces, truncated and corrupt input is an error."""

from __future__ import annotations

import gzip
import itertools
import os
import sys
import tracemalloc
import zlib
from collections.abc import Callable

import brotli  # type: ignore[import-untyped, unused-ignore]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sseproxy.decoding import DECODABLE, MAX_PIECE, DecodeError, Decoder, decoder_for
from sseproxy.headers import decodable_accept_encoding, upstream_accept_encoding

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd


def _deflate(data: bytes, wbits: int) -> bytes:
    obj = zlib.compressobj(wbits=wbits)
    return obj.compress(data) + obj.flush()


# name -> (Content-Encoding, compress): raw deflate is what some servers send as "deflate".
CODECS: dict[str, tuple[str, Callable[[bytes], bytes]]] = {
    "gzip": ("gzip", gzip.compress),
    "x-gzip": ("x-gzip", gzip.compress),
    "deflate": ("deflate", lambda d: _deflate(d, zlib.MAX_WBITS)),
    "deflate-raw": ("deflate", lambda d: _deflate(d, -zlib.MAX_WBITS)),
    "br": ("br", brotli.compress),
    "zstd": ("zstd", zstd.compress),
}
SAMPLE = b"".join(b'data: {"choices": [{"delta": {"content": "token %d"}}]}\n\n' % i for i in range(500))
KNOWN_WORD = b"data: hello\n\n"


def decode_all(decoder: Decoder, pieces: list[bytes]) -> bytes:
    out = b"".join(p for piece in pieces for p in decoder.decode(piece))
    return out + decoder.flush()


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def new_decoder(name: str) -> Decoder:
    decoder = decoder_for(CODECS[name][0])
    assert decoder is not None
    return decoder


@pytest.mark.parametrize("name", list(CODECS))
@pytest.mark.parametrize("payload", [b"", KNOWN_WORD, SAMPLE, os.urandom(300_000)],
                         ids=["empty", "word", "sse", "random"])
def test_round_trip(name: str, payload: bytes) -> None:
    assert decode_all(new_decoder(name), [CODECS[name][1](payload)]) == payload


@pytest.mark.parametrize("name", list(CODECS))
@settings(max_examples=60, deadline=None)
@given(payload=st.binary(max_size=3000), sample=st.booleans(), data=st.data())
def test_any_split_of_the_compressed_bytes_decodes_the_same(name: str, payload: bytes, sample: bool,
                                                           data: st.DataObject) -> None:
    payload = SAMPLE if sample else payload
    compressed = CODECS[name][1](payload)
    cuts = data.draw(st.lists(st.integers(0, len(compressed)), max_size=20))
    assert decode_all(new_decoder(name), split_at(compressed, cuts)) == payload


@pytest.mark.parametrize("name", list(CODECS))
@settings(max_examples=40, deadline=None)
@given(payload=st.binary(min_size=1, max_size=2000), data=st.data())
def test_every_truncation_is_an_error(name: str, payload: bytes, data: st.DataObject) -> None:
    compressed = CODECS[name][1](payload)
    cut = data.draw(st.integers(1, len(compressed) - 1))
    with pytest.raises(DecodeError, match=r"ended early|bad"):
        decode_all(new_decoder(name), [compressed[:cut]])


def test_an_empty_body_is_not_truncated() -> None:
    for name in CODECS:
        assert decode_all(new_decoder(name), [b""]) == b""


def _bomb(name: str, size: int) -> bytes:
    zeros = b"\0" * size
    if name == "br":
        return bytes(brotli.compress(zeros, quality=5))
    if name.startswith("deflate"):
        return _deflate(zeros, zlib.MAX_WBITS if name == "deflate" else -zlib.MAX_WBITS)
    return CODECS[name][1](zeros)


@pytest.mark.parametrize("name", ["gzip", "deflate", "deflate-raw", "br", "zstd"])
def test_a_bomb_comes_out_in_bounded_pieces_one_at_a_time(name: str) -> None:
    size = 64 * 1024 * 1024
    bomb = _bomb(name, size)
    assert len(bomb) < size // 500  # a real bomb: a read of this expands a thousandfold and more
    decoder = new_decoder(name)
    total = pieces = 0
    tracemalloc.start()
    try:
        for piece in decoder.decode(bomb):  # the whole bomb in one read
            assert 0 < len(piece) <= MAX_PIECE
            total += len(piece)
            pieces += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert decoder.flush() == b""
    assert total == size
    assert pieces >= size // MAX_PIECE
    assert peak < 4 * MAX_PIECE  # never more than a piece or two held at once, not 64 MiB


CORRUPT = {
    "gzip": [b"not gzip at all", gzip.compress(SAMPLE) + b"trailing junk"],
    "deflate": [b"\xff\xff\xff\xff"],
    "br": [b"not brotli at all", b"\xff" * 16, brotli.compress(SAMPLE) + b"trailing junk"],
    "zstd": [b"not zstd at all", zstd.compress(SAMPLE) + b"trailing junk"],
}


@pytest.mark.parametrize("encoding,data", [(e, d) for e, ds in CORRUPT.items() for d in ds])
def test_corrupt_input_is_an_error(encoding: str, data: bytes) -> None:
    decoder = decoder_for(encoding)
    assert decoder is not None
    with pytest.raises(DecodeError, match=f"bad {encoding} data from upstream"):
        decode_all(decoder, [data])


def test_a_gzip_body_whose_checksum_fails_is_an_error() -> None:
    compressed = bytearray(gzip.compress(SAMPLE))
    compressed[len(compressed) // 2] ^= 0xFF
    with pytest.raises(DecodeError):
        decode_all(new_decoder("gzip"), [bytes(compressed)])


def test_concatenated_gzip_members_and_zstd_frames_decode_whole() -> None:
    assert decode_all(new_decoder("gzip"), [gzip.compress(b"one ") + gzip.compress(b"two")]) == b"one two"
    skippable = b"\x50\x2a\x4d\x18" + (4).to_bytes(4, "little") + b"skip"
    frames = zstd.compress(b"one ") + skippable + zstd.compress(b"two")
    assert decode_all(new_decoder("zstd"), split_at(frames, [3, 10, 20])) == b"one two"


def test_a_zstd_frame_asking_for_a_window_over_8_mib_is_refused() -> None:
    """The window bounds the decoder's memory per stream; 8 MiB is RFC 9659's limit for the coding."""
    compressor = zstd.ZstdCompressor(options={zstd.CompressionParameter.window_log: 24})
    frame = compressor.compress(SAMPLE) + compressor.flush()  # streamed: the header declares the window
    with pytest.raises(DecodeError, match="memory"):
        decode_all(new_decoder("zstd"), [frame])
    compressor = zstd.ZstdCompressor(options={zstd.CompressionParameter.window_log: 23})
    assert decode_all(new_decoder("zstd"), [compressor.compress(SAMPLE) + compressor.flush()]) == SAMPLE


def test_a_flushed_br_or_zstd_stream_yields_each_event_as_its_bytes_arrive() -> None:
    """What streaming depends on: a flush upstream makes everything before it decodable at once."""
    br, zs = brotli.Compressor(), zstd.ZstdCompressor()
    decoders = new_decoder("br"), new_decoder("zstd")
    for i in range(3):
        event = b"data: token %d\n\n" % i
        pieces = [br.process(event) + br.flush(), zs.compress(event, zstd.ZstdCompressor.FLUSH_BLOCK)]
        for decoder, piece in zip(decoders, pieces, strict=True):
            assert b"".join(decoder.decode(piece)) == event
    assert b"".join(decoders[0].decode(br.finish())) == b""
    assert b"".join(decoders[1].decode(zs.flush())) == b""
    assert [d.flush() for d in decoders] == [b"", b""]


def test_decoder_for_knows_each_coding_and_nothing_else() -> None:
    assert {"gzip", "x-gzip", "deflate", "br", "zstd", "identity"} == DECODABLE
    for coding in ("gzip", "X-Gzip", " deflate ", "BR", "zstd"):
        decoder = decoder_for(coding)
        assert decoder is not None and decoder.encoding == coding.strip().lower()
    for other in (None, "", "identity", "compress", "gzip, br", "xz"):
        assert decoder_for(other) is None


def test_accept_encoding_keeps_br_and_zstd_but_a_local_upstream_is_still_asked_for_identity() -> None:
    client = "gzip, deflate, br;q=0.9, zstd, compress, *;q=0"
    assert decodable_accept_encoding(client) == "gzip, deflate, br;q=0.9, zstd"
    assert decodable_accept_encoding("compress") == "identity"
    assert upstream_accept_encoding("auto", client, prefer_identity=False) == "gzip, deflate, br;q=0.9, zstd"
    assert upstream_accept_encoding("auto", client, prefer_identity=True) == "identity"
