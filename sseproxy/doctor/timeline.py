"""What arrived when: one request's recording, and the sans-io recorder that builds it from the
socket's reads (each stamped with a monotonic time), decoding and counting events as they complete.

An event is a frame as the proxy forwards it: in an event stream, a block ending in a blank line
(comments such as heartbeats included); in NDJSON, a line.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Protocol

from ..decoding import MAX_PIECE, DecodeError, decoder_for
from ..framing import Framer, StreamKind, framer_for, stream_kind
from .http1 import ResponseParser

MAX_READS = 200_000  # bounds the reads kept for one request (a fast endless stream under a long --timeout)


@dataclass(frozen=True)
class Read:
    t: float  # seconds from the request's last byte sent to this read off the socket
    size: int  # bytes in this read, as they came off the wire
    events: int  # events that this read completed


@dataclass(frozen=True)
class Failure:
    """Why there is nothing (more) to measure: ``code`` is connect_failed, timeout, bad_response or
    decode_failed."""

    code: str
    message: str


@dataclass
class Timeline:
    """One request, as the socket saw it."""

    accept_encoding: str
    status: int | None = None
    reason: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    head_at: float | None = None  # seconds until the response head was whole
    reads: list[Read] = field(default_factory=list)
    kind: StreamKind = StreamKind.NONE
    ended: str = "open"  # complete (by its own framing), closed (cut before its end), timeout (we stopped)
    failure: Failure | None = None
    body_bytes: int = 0  # of the body as sent (de-chunked, still content-encoded)
    dropped_reads: int = 0  # reads past MAX_READS: counted here, not kept

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values) if values else None

    @property
    def events(self) -> int:
        return sum(r.events for r in self.reads)

    def event_times(self) -> list[float]:
        """One time per event: the time of the read that completed it."""
        return [r.t for r in self.reads for _ in range(r.events)]


class _Decoder(Protocol):
    def decode(self, data: bytes) -> Iterator[bytes]: ...
    def flush(self) -> bytes: ...


class BrotliDecoder:
    """``br``, incrementally, in pieces of at most MAX_PIECE, like ``decoding.Decoder``."""

    def __init__(self) -> None:
        import brotli  # type: ignore[import-untyped]

        self._brotli = brotli
        self._obj = brotli.Decompressor()

    def decode(self, data: bytes) -> Iterator[bytes]:
        try:
            out: bytes = self._obj.process(data, output_buffer_limit=MAX_PIECE)
            while True:
                if out:
                    yield out
                if self._obj.can_accept_more_data():
                    return
                out = self._obj.process(b"", output_buffer_limit=MAX_PIECE)
        except self._brotli.error as e:
            raise DecodeError(f"bad br data: {e}") from None

    def flush(self) -> bytes:
        if not self._obj.is_finished():
            raise DecodeError("br data ended early")
        return b""


def content_decoder(encoding: str | None) -> _Decoder | None:
    """A decoder for the response's Content-Encoding, None for identity; DecodeError for one the doctor
    cannot read (then it cannot count events)."""
    name = (encoding or "").strip().lower()
    if name in ("", "identity", "none"):
        return None
    if name == "br":
        return BrotliDecoder()
    decoder = decoder_for(name)
    if decoder is None:
        raise DecodeError(f"cannot decode Content-Encoding: {encoding}, so cannot count its events")
    return decoder


class Recorder:
    """Builds a Timeline from reads. ``feed`` raises ProtocolError or DecodeError on a response it
    cannot follow; the caller records that with ``fail``."""

    def __init__(self, timeline: Timeline, method: str):
        self.timeline = timeline
        self._parser = ResponseParser(method)
        self._decoder: _Decoder | None = None
        self._framer: Framer | None = None

    @property
    def done(self) -> bool:
        return self.timeline.ended != "open" or self.timeline.failure is not None

    @property
    def has_head(self) -> bool:
        return self.timeline.head_at is not None

    def feed(self, t: float, data: bytes) -> None:
        pieces = self._parser.feed(data)
        if self.timeline.head_at is None and self._parser.head is not None:
            self._start(t)
        self.timeline.body_bytes += sum(len(piece) for piece in pieces)
        events = sum(self._count(piece) for piece in pieces)
        if self._parser.done:
            events += self._finish()
        self._add(Read(t, len(data), events))
        if self._parser.done:
            self.timeline.ended = "complete"

    def close(self) -> None:
        """The connection closed (EOF): the end of a close-delimited body, or a cut-off one."""
        if self.timeline.ended != "open":
            return
        if self._parser.eof():
            extra = self._finish()
            if extra and self.timeline.reads:
                last = self.timeline.reads[-1]
                self.timeline.reads[-1] = replace(last, events=last.events + extra)
            self.timeline.ended = "complete"
        else:
            self.timeline.ended = "closed"

    def stop(self) -> None:
        """We stopped listening (the --timeout passed)."""
        if self.timeline.ended == "open":
            self.timeline.ended = "timeout"

    def fail(self, code: str, message: str) -> None:
        if self.timeline.failure is None:
            self.timeline.failure = Failure(code, message)

    def _start(self, t: float) -> None:
        head = self._parser.head
        assert head is not None
        tl = self.timeline
        tl.status, tl.reason, tl.headers, tl.head_at = head.status, head.reason, head.headers, t
        tl.kind = stream_kind(head.get("Content-Type"), "auto")
        if tl.kind in (StreamKind.SSE, StreamKind.LINES):
            self._framer = framer_for(tl.kind)
            self._decoder = content_decoder(head.get("Content-Encoding"))

    def _count(self, piece: bytes) -> int:
        if self._framer is None:
            return 0
        before = self._framer.frames
        if self._decoder is None:
            self._framer.feed(piece)
        else:
            for decoded in self._decoder.decode(piece):
                self._framer.feed(decoded)
        return self._framer.frames - before

    def _finish(self) -> int:
        """Events completed by the decoder's last bytes."""
        if self._framer is None or self._decoder is None:
            return 0
        before = self._framer.frames
        self._framer.feed(self._decoder.flush())
        return self._framer.frames - before

    def _add(self, read: Read) -> None:
        if len(self.timeline.reads) < MAX_READS:
            self.timeline.reads.append(read)
        else:
            self.timeline.dropped_reads += 1
            last = self.timeline.reads[-1]
            self.timeline.reads[-1] = replace(last, events=last.events + read.events)
