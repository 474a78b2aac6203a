"""Sans-io framers: fed bytes as they arrive, they return only whole frames.

``stream_kind()`` is the one decision of whether a response streams. An event stream is cut after
the blank line that ends an event (LF, CRLF or CR line endings, mixed too); a line-delimited stream
after each line. A partial tail waits for its end; one frame over ``max_frame`` is let through as it
comes, so memory per stream stays bounded.
"""

from __future__ import annotations

import enum
import re

MAX_FRAME = 1024 * 1024  # bounds the bytes held per stream while a frame is incomplete

# The last "line terminator followed by a line terminator" in the buffer. A CR directly followed
# by LF is one terminator (CRLF), never two, hence the look-ahead. Greedy ``.*`` makes the regex
# engine scan from the end, so a chunk that ends on a boundary costs almost nothing.
_LAST_SSE_BOUNDARY = re.compile(rb"(?s:.*)(?:\r\n|\n|\r(?!\n))(?:\r\n|\n|\r)")
_SSE_BOUNDARY = re.compile(rb"(?:\r\n|\n|\r(?!\n))(?:\r\n|\n|\r)")
SSE_BOUNDARY = _SSE_BOUNDARY  # the blank line that ends an event: for features that split what the relay wrote
LINE_END = re.compile(rb"\r\n|\n|\r")
# Endings that always close an event: LF LF (or CRLF LF), CRLF CRLF, CR CR.
_ENDS_ON_BOUNDARY = (b"\n\n", b"\r\n\r\n", b"\r\r")
_CONTEXT = 3  # a boundary is at most 4 bytes: keep 3 already-scanned bytes to find one split by a read
# The byte CR as an int: ``CR in data`` is a memchr, while ``b"\r" in data`` first tries the bytes as an
# int, and raises and clears a TypeError with a formatted message to learn it is not one (CPython
# 3.11): six times the cost, on every event.
CR = 13


class StreamKind(enum.Enum):
    NONE = "none"      # not streamed: relayed as it arrives, headers and bytes untouched
    RAW = "raw"        # streamed (stream: always) without framing: each piece as it arrives
    SSE = "sse"        # text/event-stream: whole events
    LINES = "lines"    # NDJSON / JSON Lines: whole lines


# the members as plain module names, for the per-event checks: Enum member lookup on the class is
# several times slower than a global
_SSE, _LINES = StreamKind.SSE, StreamKind.LINES

STREAM_TYPES = {
    "text/event-stream": StreamKind.SSE,
    "application/x-ndjson": StreamKind.LINES,
    "application/jsonl": StreamKind.LINES,
    "application/json-seq": StreamKind.LINES,
    "application/stream+json": StreamKind.LINES,
}


def stream_kind(content_type: str | None, mode: str) -> StreamKind:
    """Whether and how a response streams, from its Content-Type and the route's ``stream`` mode."""
    if mode == "never":
        return StreamKind.NONE
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    kind = STREAM_TYPES.get(mime)
    if kind is not None:
        return kind
    return StreamKind.RAW if mode == "always" else StreamKind.NONE


def accepts_stream(accept: str | None) -> bool:
    """True where the request's Accept names a stream type (EventSource sends text/event-stream)."""
    return any(p.split(";", 1)[0].strip().lower() in STREAM_TYPES for p in (accept or "").split(","))


class Framer:
    """Base framer: holds the incomplete tail. ``mid_frame`` is true while an oversized frame is
    being let through, the one time the client is not between whole frames."""

    __slots__ = ("_buf", "frames", "max_frame", "mid_frame")  # one per stream in flight: no instance dict

    def __init__(self, max_frame: int = MAX_FRAME):
        self.max_frame = max_frame
        self.mid_frame = False
        self.frames = 0
        self._buf = bytearray()

    def _boundary_end(self, data: bytes | bytearray, start: int) -> int:
        """End of the last frame boundary in ``data`` at or after ``start``, or -1."""
        raise NotImplementedError

    def _count(self, data: bytes | bytearray) -> int:
        raise NotImplementedError

    def feed(self, data: bytes) -> bytes:
        """Whole frames completed by ``data`` (b"" if none), in one piece to write."""
        if not self._buf:
            end = self._boundary_end(data, 0)
            if end == len(data):
                self._complete(data)
                return data
            self._buf += data
        else:
            scan_from = max(0, len(self._buf) - _CONTEXT)
            self._buf += data
            end = self._boundary_end(self._buf, scan_from)
        if end >= 0:
            out = bytes(self._buf[:end])
            del self._buf[:end]
            self._complete(out)
            return out
        if len(self._buf) > self.max_frame:
            out = bytes(self._buf[:-_CONTEXT])
            del self._buf[:-_CONTEXT]
            self.mid_frame = True
            return out
        return b""

    def _complete(self, out: bytes | bytearray) -> None:
        self.mid_frame = False
        self.frames += self._count(out)

    def flush(self) -> bytes:
        """Whatever is left when the stream ends (an incomplete last frame, passed on as it is)."""
        out = bytes(self._buf)
        self._buf.clear()
        return out


class SseFramer(Framer):
    __slots__ = ()

    def feed(self, data: bytes) -> bytes:
        if not self._buf and data.endswith(b"\n\n") and CR not in data:
            # the path of nearly every event: whole LF-only events in one read, one call instead of five
            self.mid_frame = False
            self.frames += data.count(b"\n\n")
            return data
        return Framer.feed(self, data)

    def _boundary_end(self, data: bytes | bytearray, start: int) -> int:
        if data.endswith(_ENDS_ON_BOUNDARY):  # the common case, one read ending an event: no regex
            return len(data)
        m = _LAST_SSE_BOUNDARY.match(data, start)
        return m.end() if m else -1

    def _count(self, data: bytes | bytearray) -> int:
        return count_frames(StreamKind.SSE, data)


class LineFramer(Framer):
    __slots__ = ()

    def _boundary_end(self, data: bytes | bytearray, start: int) -> int:
        end = max(data.rfind(b"\n", start), data.rfind(b"\r", start))
        return end + 1 if end >= 0 else -1

    def _count(self, data: bytes | bytearray) -> int:
        return count_frames(StreamKind.LINES, data)


def count_frames(kind: StreamKind, data: bytes | bytearray) -> int:
    """Frame boundaries in ``data``, as the framer counts them: on what a framer returned (whole
    frames), this is the number of frames, so an observer can count without a framer of its own."""
    if kind is _SSE:
        if CR not in data:  # LF-only: the same non-overlapping count as the regex, in C
            return data.count(b"\n\n")
        return len(_SSE_BOUNDARY.findall(data))
    if kind is _LINES:
        return data.count(b"\n") or data.count(b"\r")
    return 0


def framer_for(kind: StreamKind) -> Framer | None:
    if kind is StreamKind.SSE:
        return SseFramer()
    if kind is StreamKind.LINES:
        return LineFramer()
    return None


def split_frames(data: bytes, sse: bool) -> list[bytes]:
    """Whole frames written by the relay, one item each (empty pieces included: callers skip them)."""
    return SSE_BOUNDARY.split(data) if sse else LINE_END.split(data)


def parse_event(block: bytes) -> tuple[str, bytes]:
    """An SSE block's event name and data lines joined with ``\\n`` (shown as two characters). A block
    that dispatches nothing in a browser is named ``(comment)`` or ``(no data)`` (only id/retry)."""
    name, data, fields = "message", [], 0
    for line in LINE_END.split(block):
        field_name, _, value = line.partition(b":")
        value = value[1:] if value.startswith(b" ") else value
        if field_name == b"event":
            name = value[:1024].decode("utf-8", "replace")  # never more of a name than is shown
        elif field_name == b"data":
            data.append(value)
        if field_name:
            fields += 1
    if not data:
        return ("(comment)" if not fields else "(no data)"), block.lstrip(b":").strip()
    return name, b"\\n".join(data)


NO_DATA = ("(comment)", "(no data)")
