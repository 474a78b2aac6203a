"""The doctor's sans-io parts: the HTTP/1.1 response parser and the recorder that counts events per
read, fed bytes by hand, split anywhere."""

from __future__ import annotations

import zlib

import brotli  # type: ignore[import-untyped]
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sseproxy.doctor.http1 import ProtocolError, ResponseParser, request_bytes
from sseproxy.doctor.probe import Request, parse_target
from sseproxy.doctor.timeline import Recorder, Timeline
from sseproxy.framing import StreamKind

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
EVENTS = [f"id: {i}\ndata: token {i}\n\n".encode() for i in range(6)]


def chunked(pieces: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def feed_split(parser: ResponseParser, data: bytes, cuts: list[int]) -> bytes:
    body = b""
    last = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        body += b"".join(parser.feed(data[last:cut]))
        last = cut
    return body


@given(st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_a_chunked_body_comes_out_whole_however_the_reads_split_it(cuts: list[int]) -> None:
    raw = HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(EVENTS)
    parser = ResponseParser()
    assert feed_split(parser, raw, [c for c in cuts if c < len(raw)]) == b"".join(EVENTS)
    assert parser.done and parser.framing == "chunked"
    assert parser.head is not None and parser.head.get("content-type") == "text/event-stream"


@given(st.lists(st.integers(min_value=0, max_value=200), max_size=8))
def test_a_content_length_body_ends_at_its_length(cuts: list[int]) -> None:
    body = b"".join(EVENTS)
    raw = HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body
    parser = ResponseParser()
    assert feed_split(parser, raw, [c for c in cuts if c < len(raw)]) == body
    assert parser.done and parser.framing == "length"


def test_a_body_without_framing_runs_to_the_close() -> None:
    parser = ResponseParser()
    assert parser.feed(HEAD + b"\r\ndata: 1\n\n") == [b"data: 1\n\n"]
    assert not parser.done and parser.framing == "close"
    assert parser.eof() and parser.done


def test_a_cut_chunked_body_is_not_complete_at_the_close() -> None:
    parser = ResponseParser()
    parser.feed(HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhel")
    assert not parser.eof()


def test_interim_responses_are_skipped_and_head_and_204_have_no_body() -> None:
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + HEAD + b"Content-Length: 2\r\n\r\nok")
    assert parser.head is not None and parser.head.status == 200 and parser.done
    head_request = ResponseParser("HEAD")
    head_request.feed(HEAD + b"Content-Length: 99\r\n\r\n")
    assert head_request.done
    empty = ResponseParser()
    empty.feed(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert empty.done


@pytest.mark.parametrize("raw", [
    b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
    HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
    HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\nokXX",
    HEAD + b"Content-Length: 1, 2\r\n\r\n",
    HEAD + b"no colon here\r\n\r\n",
])
def test_malformed_responses_raise_protocol_error(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        ResponseParser().feed(raw)


def test_request_bytes_are_exactly_as_given_and_refuse_injection() -> None:
    raw = request_bytes("POST", "/v1?x=1", [("Host", "h:1"), ("Content-Length", "2")], b"{}")
    assert raw == b"POST /v1?x=1 HTTP/1.1\r\nHost: h:1\r\nContent-Length: 2\r\n\r\n{}"
    with pytest.raises(ValueError):
        request_bytes("GET", "/", [("X-A", "1\r\nEvil: 1")], b"")


def record(raw_reads: list[bytes], method: str = "GET") -> Timeline:
    timeline = Timeline("gzip, deflate, br")
    recorder = Recorder(timeline, method)
    for i, data in enumerate(raw_reads):
        recorder.feed(i * 0.1, data)
    recorder.close()
    return timeline


def test_the_recorder_counts_the_events_each_read_completed() -> None:
    body = chunked(EVENTS)
    head = HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
    # head alone; half an event; its end and two more; the rest
    cut1, cut2 = len(b"%x\r\n" % len(EVENTS[0])) + 5, len(chunked(EVENTS[:3])) - 5
    timeline = record([head, body[:cut1], body[cut1:cut2], body[cut2:]])
    assert [r.events for r in timeline.reads] == [0, 0, 3, 3]
    assert timeline.event_times() == pytest.approx([0.2, 0.2, 0.2, 0.3, 0.3, 0.3])
    assert timeline.head_at == 0.0 and timeline.kind is StreamKind.SSE and timeline.ended == "complete"


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
def test_the_recorder_decodes_to_count_events(encoding: str) -> None:
    if encoding == "br":
        whole = brotli.compress(b"".join(EVENTS))
        pieces = [whole[: len(whole) // 2], whole[len(whole) // 2:]]
    else:
        c = zlib.compressobj(wbits=31 if encoding == "gzip" else 15)
        pieces = [c.compress(e) + c.flush(zlib.Z_SYNC_FLUSH) for e in EVENTS] + [c.flush()]
    head = HEAD + f"Content-Encoding: {encoding}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    timeline = record([head, *(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p), b"0\r\n\r\n"])
    assert timeline.events == len(EVENTS)
    assert timeline.ended == "complete" and timeline.failure is None
    if encoding != "br":
        assert [r.events for r in timeline.reads[1:7]] == [1] * 6  # each flushed event counted on arrival


def test_a_stream_closed_mid_body_is_recorded_as_closed() -> None:
    timeline = record([HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(EVENTS[:2])[:-5]])
    assert timeline.ended == "closed" and timeline.events == 2


def test_a_non_stream_counts_no_events() -> None:
    timeline = record([b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n{"a": 1}\n'])
    assert timeline.kind is StreamKind.NONE and timeline.events == 0 and timeline.body_bytes == 9


def test_request_headers_default_like_a_browser_and_give_way_to_h() -> None:
    target = parse_target("http://127.0.0.1:3000/events?x=1")
    assert (target.authority, target.path) == ("127.0.0.1:3000", "/events?x=1")
    plain = dict(Request(target_url := "http://127.0.0.1:3000/events").header_lines(target, "gzip, deflate, br"))
    assert plain["Host"] == "127.0.0.1:3000" and plain["Accept"] == "text/event-stream"
    assert plain["Accept-Encoding"] == "gzip, deflate, br" and plain["Cache-Control"] == "no-cache"
    given = Request(target_url, "POST", (("accept", "application/x-ndjson"), ("Cache-Control", ""),
                                         ("Accept-Encoding", "gzip"), ("X-Key", "k")), b'{"stream": true}')
    browser = given.header_lines(target, "gzip, deflate, br")
    assert ("accept", "application/x-ndjson") in browser and ("Accept-Encoding", "gzip") in browser
    assert "Cache-Control" not in dict(browser)  # 'Name:' removes a default, as in curl
    assert ("X-Key", "k") in browser and ("Content-Type", "application/json") in browser
    assert ("Content-Length", "16") in browser
    assert ("Accept-Encoding", "identity") in given.header_lines(target, "identity")  # -H never overrides that
    form = dict(Request(target_url, "POST", body=b"a=1").header_lines(target, "identity"))
    assert form["Content-Type"] == "application/x-www-form-urlencoded"
    assert parse_target("https://[::1]/x").authority == "[::1]"


@pytest.mark.parametrize("url", ["ftp://x/", "127.0.0.1:3000/events", "http:///x", "http://h:99999/"])
def test_urls_that_are_not_http_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        parse_target(url)
