"""Recordings without a relay: the recorder driven through the hook protocol, the file format, names,
redaction, atomic writes and loading a directory back."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from sseproxy import recorder as recorder_module
from sseproxy import recording as recording_module
from sseproxy.accesslog import RequestRecord
from sseproxy.errors import ConfigError, Outcome
from sseproxy.framing import StreamKind
from sseproxy.hooks import ExchangeInfo, Hook
from sseproxy.recorder import FrameSplitter, Recorder
from sseproxy.recording import (
    REDACTED,
    Frame,
    Recording,
    Redaction,
    file_name,
    is_recording_name,
    load_dir,
    write_atomic,
)

STARTED = 1000.0  # the exchange's loop time; data times are given relative to it


def info(method: str = "POST", path: str = "/v1/chat/completions", query: str = "",
         headers: list[tuple[str, str]] | None = None, seq: int = 7) -> ExchangeInfo:
    return ExchangeInfo(id=seq, route="r", method=method, path=path, query=query, client="127.0.0.1",
                        headers=CIMultiDictProxy(CIMultiDict(headers or [("Content-Type", "application/json")])),
                        started=STARTED)


def end(hook: Hook, outcome: Any = "ok", ttfb: float | None = 0.0421) -> None:
    hook.end(RequestRecord(method="POST", path="/", started=STARTED, ttfb=ttfb, outcome=outcome))


def only_file(directory: Path) -> tuple[Path, dict[str, Any]]:
    files = sorted(directory.iterdir())
    assert len(files) == 1, files
    return files[0], json.loads(files[0].read_text())


def stream(directory: Path, chunks: list[tuple[float, bytes]], kind: StreamKind = StreamKind.SSE,
           outcome: Any = "ok", secrets: tuple[str, ...] = ()) -> dict[str, Any]:
    hook = Recorder(directory, secrets).open(info())
    hook.request_body(b'{"model": "m", ')
    hook.request_body(b'"stream": true}')
    hook.response(200, CIMultiDict([("Content-Type", "text/event-stream")]), kind)
    for at, chunk in chunks:
        hook.data(chunk, STARTED + at, chunk.count(b"\n\n"))
    end(hook, outcome)
    return only_file(directory)[1]


def test_a_stream_is_recorded_one_frame_each_with_its_time_and_the_spec_layout(tmp_path: Path) -> None:
    data = stream(tmp_path, [(0.0505, b"data: 1\n\ndata: 2\n\n"), (0.3, b"event: x\r\ndata: 3\r\n\r\n")])
    assert list(data) == ["request", "response"]
    assert list(data["request"]) == ["method", "path", "query", "headers", "body"]
    assert list(data["response"]) == ["status", "headers", "ttfb_ms", "frames", "end"]
    assert data["request"] == {"method": "POST", "path": "/v1/chat/completions", "query": "",
                               "headers": [["Content-Type", "application/json"]],
                               "body": '{"model": "m", "stream": true}'}
    assert data["response"]["status"] == 200 and data["response"]["ttfb_ms"] == 42.1
    assert data["response"]["frames"] == [{"t": 50.5, "data": "data: 1\n\n"}, {"t": 50.5, "data": "data: 2\n\n"},
                                          {"t": 300.0, "data": "event: x\r\ndata: 3\r\n\r\n"}]
    assert data["response"]["end"] == "ok"


def test_the_file_is_readable_one_line_per_header_and_frame(tmp_path: Path) -> None:
    stream(tmp_path, [(0.01, b"data: 1\n\n"), (0.02, b"data: 2\n\n")])
    text = only_file(tmp_path)[0].read_text()
    assert '    "headers": [\n      ["Content-Type", "application/json"]\n    ],' in text
    assert '      {"t": 10.0, "data": "data: 1\\n\\n"},\n      {"t": 20.0, "data": "data: 2\\n\\n"}\n' in text
    assert text.endswith("}\n")


def test_a_piece_of_an_oversized_frame_waits_for_the_rest_and_a_cut_tail_is_kept(tmp_path: Path) -> None:
    data = stream(tmp_path, [(0.1, b"data: lo"), (0.2, b"ng\n"), (0.3, b"\ndata: cut")], outcome="upstream_error")
    assert data["response"]["frames"] == [{"t": 300.0, "data": "data: long\n\n"}, {"t": 300.0, "data": "data: cut"}]
    assert data["response"]["end"] == "error"


@pytest.mark.parametrize("outcome, expected", [(Outcome.OK, "ok"), ("ok", "ok"), (Outcome.CLIENT_CLOSED, "error"),
                                               (Outcome.UPSTREAM_ERROR, "error"), (Outcome.TIMEOUT, "error"),
                                               (Outcome.SHUTDOWN, "error"), ("client_closed", "error")])
def test_end_is_ok_only_for_the_ok_outcome(tmp_path: Path, outcome: Any, expected: str) -> None:
    assert stream(tmp_path, [(0.1, b"data: 1\n\n")], outcome=outcome)["response"]["end"] == expected


def test_ndjson_lines_and_unframed_pieces(tmp_path: Path) -> None:
    lines = stream(tmp_path / "a", [(0.1, b'{"a": 1}\n{"b": 2}\r\n')], kind=StreamKind.LINES)
    assert [f["data"] for f in lines["response"]["frames"]] == ['{"a": 1}\n', '{"b": 2}\r\n']
    raw = stream(tmp_path / "b", [(0.1, b"abc"), (0.2, b"def\n\n")], kind=StreamKind.RAW)
    assert raw["response"]["frames"] == [{"t": 100.0, "data": "abc"}, {"t": 200.0, "data": "def\n\n"}]


def test_a_response_that_is_not_a_stream_has_a_body_and_non_utf8_is_base64(tmp_path: Path) -> None:
    hook = Recorder(tmp_path).open(info(method="PUT", path="/upload"))
    hook.request_body(b"\xff\xfe\x00raw")
    hook.response(201, CIMultiDict([("Content-Type", "application/octet-stream")]), StreamKind.NONE)
    hook.data(b"\x89PNG", STARTED + 0.1, 0)
    hook.data(b"\r\n\x1a", STARTED + 0.2, 0)
    end(hook)
    path, data = only_file(tmp_path)
    assert "frames" not in data["response"]
    assert data["request"]["body"] == {"base64": base64.b64encode(b"\xff\xfe\x00raw").decode()}
    assert data["response"]["body"] == {"base64": base64.b64encode(b"\x89PNG\r\n\x1a").decode()}
    ((name, loaded),) = load_dir(tmp_path)
    assert name == path.name
    assert loaded.request.body == b"\xff\xfe\x00raw" and loaded.response.body == b"\x89PNG\r\n\x1a"
    assert loaded.response.frames is None


def test_a_frame_that_is_not_utf8_is_base64_and_loads_back(tmp_path: Path) -> None:
    data = stream(tmp_path, [(0.1, b"data: \xff\n\n")])
    encoded = base64.b64encode(b"data: \xff\n\n").decode()
    assert data["response"]["frames"] == [{"t": 100.0, "data": {"base64": encoded}}]
    ((_, loaded),) = load_dir(tmp_path)
    assert loaded.response.frames == (Frame(100.0, b"data: \xff\n\n"),)


def test_nothing_is_written_without_a_response_head(tmp_path: Path) -> None:
    hook = Recorder(tmp_path).open(info())
    hook.request_body(b"{}")
    end(hook, "refused")
    assert list(tmp_path.iterdir()) == []


def test_over_the_size_cap_the_recording_is_dropped_with_one_warning(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    hook = Recorder(tmp_path, max_bytes=100).open(info())
    hook.request_body(b"x" * 60)
    hook.response(200, CIMultiDict([("Content-Type", "text/event-stream")]), StreamKind.SSE)
    with caplog.at_level(logging.WARNING, "sseproxy"):
        for i in range(10):
            hook.data(b"data: 0123456789\n\n", STARTED + i / 100, 1)
        end(hook)
    assert list(tmp_path.iterdir()) == []
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "over 100 bytes" in warnings[0].getMessage()


async def test_a_large_recording_is_written_off_the_loop_and_close_waits_for_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recorder_module, "DIRECT_WRITE", 10)
    saved: list[Path] = []
    recorder = Recorder(tmp_path, on_saved=lambda path, _: saved.append(path))
    hook = recorder.open(info())
    hook.response(200, CIMultiDict([("Content-Type", "text/event-stream")]), StreamKind.SSE)
    hook.data(b"data: " + b"x" * 1000 + b"\n\n", STARTED + 0.1, 1)
    end(hook)
    await asyncio.wait_for(recorder.close(), 5)
    path, data = only_file(tmp_path)
    assert saved == [path]
    assert data["response"]["frames"][0]["data"] == "data: " + "x" * 1000 + "\n\n"


def test_file_names_sort_by_time_and_say_what_they_hold() -> None:
    name = file_name(1764441012.123, 7, "post", "/v1/chat/completions")
    assert name == "20251129T183012.123Z-0007-POST-v1_chat_completions.json"
    assert file_name(1764441012.5, 12345, "GET", "/") == "20251129T183012.500Z-12345-GET-root.json"
    assert file_name(1764441012.5, 1, "GET", "/a b/../é?x") == "20251129T183012.500Z-0001-GET-a_b_.._x.json"
    assert len(file_name(0, 1, "GET", "/" + "a" * 500)) < 120
    names = [file_name(1764441012 + s, i, "GET", "/z" if i % 2 else "/a") for i, s in enumerate([0, 0.001, 1, 60])]
    assert names == sorted(names)


def test_the_same_name_twice_gets_a_suffix_never_overwrites(tmp_path: Path) -> None:
    first = write_atomic(tmp_path, "x.json", "1")
    second = write_atomic(tmp_path, "x.json", "2")
    assert (first.name, second.name) == ("x.json", "x-2.json")
    assert first.read_text() == "1" and second.read_text() == "2"


def test_writes_are_atomic_a_failure_leaves_nothing_and_temp_files_are_never_loaded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    temps: list[str] = []

    def failing_replace(src: str, dst: object) -> None:
        temps.append(Path(src).name)
        assert Path(src).parent == tmp_path  # the same directory: the rename cannot cross filesystems
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(recording_module.os, "replace", failing_replace)
    with pytest.raises(OSError):
        write_atomic(tmp_path, "20251129T183012.123Z-0001-GET-x.json", "{}")
    assert list(tmp_path.iterdir()) == []  # no partial file, no temp file left behind
    (temp,) = temps
    assert temp.startswith(".") and not temp.endswith(".json") and not is_recording_name(temp)
    (tmp_path / temp).write_text('{"half": ')  # as if a writer were still at it
    assert load_dir(tmp_path) == []


def test_a_recording_failure_is_logged_never_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    hook = Recorder(blocker / "sub").open(info())  # a directory that cannot be made
    hook.response(200, CIMultiDict(), StreamKind.SSE)
    with caplog.at_level(logging.WARNING, "sseproxy"):
        end(hook)
    assert any("could not write a recording" in r.getMessage() for r in caplog.records)


SECRET_HEADER_VALUES = {"Authorization": "Bearer inbound-tok-111", "Cookie": "session=cookie-222",
                        "X-Api-Key": "xkey-333", "Api-Key": "apikey-444", "Proxy-Authorization": "Basic pa-555"}
SECRETS = ("sk-injected-abc+/123", "inbound-tok-111")


def test_every_listed_header_and_every_secret_anywhere_is_redacted(tmp_path: Path) -> None:
    headers = [*SECRET_HEADER_VALUES.items(), ("X-Echo", "sk-injected-abc+/123 again"), ("Accept", "*/*")]
    hook = Recorder(tmp_path, SECRETS).open(info(path="/v1/sk-injected-abc+/123/x",
                                                 query="key=sk-injected-abc%2B%2F123&q=1", headers=headers))
    hook.request_body(b'{"auth": "inbound-tok-111", "n": "\xff"}')
    hook.response(200, CIMultiDict([("Content-Type", "text/event-stream"), ("Set-Cookie", "sid=setcookie-666"),
                                    ("Authorization", "Bearer resp-777"), ("X-Key-Echo", "sk-injected-abc+/123")]),
                  StreamKind.RAW)
    hook.data(b"data: sk-inje", STARTED + 0.1, 0)  # a secret split between two unframed pieces (RAW: no frames)
    hook.data(b"cted-abc+/123\n\n", STARTED + 0.2, 0)
    hook.data(b"data: inbound-tok-111\n\n", STARTED + 0.3, 0)
    end(hook)
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    for value in [*SECRETS, *SECRET_HEADER_VALUES.values(), "setcookie-666", "resp-777", "sk-injected-abc%2B%2F123",
                  "cookie-222", "pa-555", "sk-inje"]:
        assert value.encode() not in raw, value
    data = only_file(tmp_path)[1]
    req_headers = dict(data["request"]["headers"])
    assert all(req_headers[name] == REDACTED for name in SECRET_HEADER_VALUES)
    assert req_headers["X-Echo"] == f"{REDACTED} again" and req_headers["Accept"] == "*/*"
    resp_headers = dict(data["response"]["headers"])
    assert resp_headers["Set-Cookie"] == resp_headers["Authorization"] == resp_headers["X-Key-Echo"] == REDACTED
    assert data["request"]["path"] == f"/v1/{REDACTED}/x" and data["request"]["query"] == f"key={REDACTED}&q=1"
    body = base64.b64decode(data["request"]["body"]["base64"])
    assert body == b'{"auth": "<redacted>", "n": "\xff"}'
    assert data["response"]["frames"] == [{"t": 200.0, "data": f"data: {REDACTED}\n\n"},
                                          {"t": 300.0, "data": f"data: {REDACTED}\n\n"}]
    assert "sk-injected" not in only_file(tmp_path)[0].name


def test_the_credential_of_an_injected_scheme_and_value_is_a_secret_alone() -> None:
    redaction = Redaction(["Bearer sk-abc123456", "Basic dXNlcjpwYXNz"])
    assert redaction.text("key sk-abc123456 refused; Bearer sent") == f"key {REDACTED} refused; Bearer sent"
    assert redaction.bytes(b"auth=dXNlcjpwYXNz") == b"auth=" + REDACTED.encode()


def test_a_secret_containing_another_is_never_half_shown() -> None:
    redaction = Redaction(["abc", "abcdef"])
    assert redaction.text("x abcdef y abc") == f"x {REDACTED} y {REDACTED}"
    frames = redaction.frames([Frame(1, b"ab"), Frame(2, b"cdef"), Frame(3, b"-abc")])
    assert frames == (Frame(2, REDACTED.encode()), Frame(3, b"-" + REDACTED.encode()))


def test_a_hand_written_file_may_leave_out_defaults_and_bad_ones_are_named(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps({"request": {"path": "/x"},
                                                 "response": {"frames": [{"t": 0, "data": "data: hi\n\n"}]}}))
    ((_, rec),) = load_dir(tmp_path)
    assert rec.request.method == "GET" and rec.request.query == "" and rec.request.body == b""
    assert rec.response.status == 200 and rec.response.end == "ok" and rec.response.ttfb_ms == 0
    (tmp_path / "b.json").write_text('{"request": {"path": "/x"}, "response": {"frames": [{"data": "d"}]}}')
    (tmp_path / "c.json").write_text('{"request": ')
    (tmp_path / "d.json").write_text('{"request": {"path": "/x"}, "response": {"status": 200, "end": "maybe"}}')
    with pytest.raises(ConfigError) as caught:
        load_dir(tmp_path)
    problems = [str(p) for p in caught.value.problems]
    assert problems[0] == f"{tmp_path / 'b.json'}: response.frames[0].t: None is not a number of milliseconds >= 0"
    assert problems[1].startswith(f"{tmp_path / 'c.json'}: invalid JSON")
    assert problems[2] == f"{tmp_path / 'd.json'}: response.end: 'maybe' is not \"ok\" or \"error\""


def test_recordings_round_trip_through_json() -> None:
    rec = Recording.from_json({"request": {"method": "post", "path": "/p", "query": "?a=1", "headers": [["A", "b"]],
                                           "body": {"base64": "/w=="}},
                               "response": {"status": 404, "headers": [], "ttfb_ms": 3, "body": "nope", "end": "ok"}})
    assert rec.request.method == "POST" and rec.request.query == "a=1" and rec.request.body == b"\xff"
    assert Recording.from_json(rec.to_json()) == rec


def test_the_splitter_finds_boundaries_split_between_feeds() -> None:
    splitter = FrameSplitter(StreamKind.SSE)
    assert splitter.feed(b"data: a\r\n") == []
    assert splitter.feed(b"\r\ndata: b\r") == [b"data: a\r\n\r\n"]
    assert splitter.feed(b"\r") == [b"data: b\r\r"]
    assert splitter.feed(b"data: c\n") == [] and splitter.flush() == b"data: c\n"
