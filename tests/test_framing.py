"""Property tests for the sans-io framers: any chunking of a valid stream gives the same events,
every forwarded piece ends on a frame boundary, and nothing is lost or reordered."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from sseproxy.framing import LineFramer, SseFramer, StreamKind, accepts_stream, stream_kind


class ReferenceSse:
    """An SSE parser after the WHATWG algorithm: CRLF, LF or CR end a line; a blank line dispatches."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str | None]] = []
        self.line = ""
        self.after_cr = False
        self.block_lines = 0
        self.data: list[str] = []
        self.event = ""
        self.id: str | None = None

    def feed(self, text: str) -> None:
        for ch in text:
            if self.after_cr and ch == "\n":
                self.after_cr = False
                continue
            self.after_cr = ch == "\r"
            if ch in "\r\n":
                self._line(self.line)
                self.line = ""
            else:
                self.line += ch

    def _line(self, line: str) -> None:
        if line == "":
            if self.data:
                self.events.append((self.event or "message", "\n".join(self.data), self.id))
            self.data, self.event, self.block_lines = [], "", 0
            return
        self.block_lines += 1
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self.data.append(value)
        elif name == "event":
            self.event = value
        elif name == "id":
            self.id = value

    @property
    def between_events(self) -> bool:
        return self.line == "" and self.block_lines == 0


EOLS = st.sampled_from(["\n", "\r\n", "\r"])
TEXT = st.text(alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=20)


@st.composite
def sse_streams(draw: st.DrawFn) -> bytes:
    out = ""
    for _ in range(draw(st.integers(0, 8))):
        lines = draw(st.lists(st.one_of(
            TEXT.map(lambda t: f"data: {t}"), TEXT.map(lambda t: f"event: {t.replace(':', '')}"),
            TEXT.map(lambda t: f": {t}"), st.integers(0, 99).map(lambda n: f"id: {n}")), min_size=1, max_size=4))
        for line in lines:
            out += line + draw(EOLS)
        out += draw(EOLS)
    return out.encode()


def chunkings(data: bytes) -> st.SearchStrategy[list[bytes]]:
    cuts = st.lists(st.integers(0, len(data)), max_size=12).map(sorted)
    return cuts.map(lambda cs: [data[a:b] for a, b in zip([0, *cs], [*cs, len(data)], strict=True)])


@settings(max_examples=300, deadline=None)
@given(st.data(), st.sampled_from([64, 1024 * 1024]))
def test_any_chunking_of_an_event_stream_gives_the_same_events_in_whole_pieces(data: st.DataObject,
                                                                                max_frame: int) -> None:
    stream = data.draw(sse_streams())
    chunks = data.draw(chunkings(stream))
    framer = SseFramer(max_frame=max_frame)
    seen = ReferenceSse()
    forwarded = b""
    for chunk in chunks:
        piece = framer.feed(chunk)
        if piece:
            seen.feed(piece.decode("latin-1"))  # an oversized piece may end inside a UTF-8 sequence
            forwarded += piece
            if not framer.mid_frame:
                assert seen.between_events, piece  # every piece ends on an event boundary
    tail = framer.flush()
    seen.feed(tail.decode("latin-1"))
    forwarded += tail
    assert forwarded == stream  # nothing lost, nothing reordered
    whole = ReferenceSse()
    whole.feed(stream.decode("latin-1"))
    assert seen.events == whole.events


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_chunking_of_ndjson_gives_whole_lines(data: st.DataObject) -> None:
    records = data.draw(st.lists(st.dictionaries(st.text(max_size=5), st.integers()), max_size=8))
    eol = data.draw(EOLS)
    stream = "".join(json.dumps(r) + eol for r in records).encode()
    framer = LineFramer()
    forwarded = b""
    for chunk in data.draw(chunkings(stream)):
        piece = framer.feed(chunk)
        if piece:
            assert piece.endswith((b"\n", b"\r"))
            forwarded += piece
    assert framer.flush() == b""
    assert forwarded == stream
    assert [json.loads(line) for line in forwarded.decode().splitlines() if line] == records


def test_events_are_counted() -> None:
    framer = SseFramer()
    framer.feed(b"data: a\r\n\r\ndata: b\n\ndata: c\r\r")
    assert framer.frames == 3


def test_a_frame_over_the_limit_is_let_through_and_the_boundary_after_it_found() -> None:
    framer = SseFramer(max_frame=10)
    assert framer.feed(b"data: " + b"x" * 20) == b"data: " + b"x" * 17
    assert framer.mid_frame
    assert framer.feed(b"\n") == b""
    assert framer.feed(b"\ndata: y\n\n") == b"xxx\n\ndata: y\n\n"
    assert not framer.mid_frame


def test_stream_kind_decision() -> None:
    assert stream_kind("text/event-stream; charset=utf-8", "auto") is StreamKind.SSE
    assert stream_kind("application/x-ndjson", "auto") is StreamKind.LINES
    assert stream_kind("application/jsonl", "auto") is StreamKind.LINES
    assert stream_kind("application/stream+json", "auto") is StreamKind.LINES
    assert stream_kind("application/json", "auto") is StreamKind.NONE
    assert stream_kind("application/json", "always") is StreamKind.RAW
    assert stream_kind("text/event-stream", "never") is StreamKind.NONE
    assert stream_kind(None, "auto") is StreamKind.NONE
    assert accepts_stream("text/html, text/event-stream;q=0.9")
    assert not accepts_stream("*/*")
